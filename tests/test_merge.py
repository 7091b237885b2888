"""LoRA merging (``mmalign.merge``, ``mmalign merge``): the merge math against hand-computed values and
peft, and a merged ``linear`` LoRA against diffusers' own multi-adapter inference on a tiny SDXL."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmalign.align.merge import check_compatible, factor, factor_product, merge, merge_layer, trim, weighted_sum
from mmalign.errors import ConfigError
from mmalign.generators.lora import LORA_FILE, LoraLayer, LoraState, read_lora, write_lora
from test_cli import error_line, mmalign_cli, mmalign_in_process

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def row(*values: float) -> LoraLayer:
    """A rank-1 LoRA whose ΔW is the 1×n row ``values`` (B = [[1]], scale 1)."""
    return LoraLayer(A=torch.tensor([values]), B=torch.ones(1, 1), alpha=1.0)


def random_layer(out: int, inp: int, rank: int, alpha: float, g: torch.Generator) -> LoraLayer:
    """Random factors of std 0.3, so that ΔW's entries are O(1) and fp32 round-off ~1e-7."""
    return LoraLayer(A=0.3 * torch.randn(rank, inp, generator=g), B=0.3 * torch.randn(out, rank, generator=g), alpha=alpha)


# --- the math -------------------------------------------------------------------------------------


def test_p11_linear_is_the_exact_sum_not_peft_linear():
    """P11: scalar rank-1 experts (A, B) = (1, 2) and (3, −1), s = 1, weights 0.5 each.

    Exact task arithmetic: 0.5·2·1 + 0.5·(−1)·3 = −0.5. peft's ``linear`` averages A and B separately:
    B'·A' = (√.5·2 + √.5·(−1))·(√.5·1 + √.5·3) = 0.5·1·4 = 2.0 (cross terms B_1·A_2, B_2·A_1)."""
    from peft import LoraConfig, get_peft_model

    experts = [LoraLayer(A=torch.tensor([[1.0]]), B=torch.tensor([[2.0]]), alpha=1.0),
               LoraLayer(A=torch.tensor([[3.0]]), B=torch.tensor([[-1.0]]), alpha=1.0)]
    ours = merge_layer(experts, [0.5, 0.5], "linear")
    assert ours.delta().item() == -0.5 and ours.A.shape == (2, 1) and ours.scale == 1.0
    assert merge_layer(experts, [0.5, 0.5], "svd", rank=2).delta().item() == pytest.approx(-0.5, abs=1e-6)

    class One(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(1, 1, bias=False)

    model = get_peft_model(One(), LoraConfig(r=1, lora_alpha=1, target_modules=["lin"]), adapter_name="e1")
    model.add_adapter("e2", LoraConfig(r=1, lora_alpha=1, target_modules=["lin"]))
    lin = model.base_model.model.lin
    for name, expert in zip(["e1", "e2"], experts):
        lin.lora_A[name].weight.data.copy_(expert.A)
        lin.lora_B[name].weight.data.copy_(expert.B)
    for kind in ("linear", "cat"):
        model.add_weighted_adapter(["e1", "e2"], [0.5, 0.5], f"m_{kind}", combination_type=kind)
    assert lin.get_delta_weight("m_linear").item() == pytest.approx(2.0)  # what we must not be
    assert lin.get_delta_weight("m_cat").item() == pytest.approx(-0.5)  # peft's exact mode, = ours


def test_linear_is_the_weighted_sum_for_different_ranks_and_alphas():
    g = torch.Generator().manual_seed(0)
    experts = [random_layer(6, 5, 2, 4.0, g), random_layer(6, 5, 3, 1.5, g)]
    merged = weighted_sum(experts, [0.7, -0.5])
    expected = 0.7 * (4.0 / 2) * experts[0].B @ experts[0].A - 0.5 * (1.5 / 3) * experts[1].B @ experts[1].A
    assert merged.A.shape == (5, 5) and merged.alpha == 5.0
    torch.testing.assert_close(merged.delta(), expected, rtol=0, atol=1e-6)


def test_svd_at_full_rank_equals_linear_and_truncates_optimally():
    g = torch.Generator().manual_seed(1)
    experts = [random_layer(9, 7, 2, 2.0, g), random_layer(9, 7, 3, 6.0, g)]
    linear = merge_layer(experts, [0.7, 0.5], "linear").delta()
    full = merge_layer(experts, [0.7, 0.5], "svd", rank=5)
    assert full.A.shape == (5, 7) and full.B.shape == (9, 5) and full.scale == 1.0
    torch.testing.assert_close(full.delta(), linear, rtol=0, atol=1e-6)  # fp32 round-off of O(1) entries
    # rank 2: Eckart–Young, ‖ΔW − ΔW_2‖_F² = Σ_{i>2} σ_i², and the dense SVD gives the same factors' product
    S = torch.linalg.svdvals(linear)
    two = merge_layer(experts, [0.7, 0.5], "svd", rank=2).delta()
    assert (linear - two).norm().item() == pytest.approx(S[2:].norm().item(), rel=1e-5)
    torch.testing.assert_close(two, factor(linear, 2).delta(), rtol=0, atol=1e-5)
    # factors share √S: ‖B'‖₂ = ‖A'‖₂ = √σ_1
    balanced = factor_product(merge_layer(experts, [0.7, 0.5], "linear").B, merge_layer(experts, [0.7, 0.5], "linear").A, 2)
    assert torch.linalg.matrix_norm(balanced.B, 2).item() == pytest.approx(S[0].sqrt().item(), rel=1e-5)
    assert torch.linalg.matrix_norm(balanced.A, 2).item() == pytest.approx(S[0].sqrt().item(), rel=1e-5)
    # a rank above min(out, in) keeps every singular value and pads with zero components
    padded = factor(linear, 12)
    assert padded.A.shape == (12, 7) and padded.B[:, 7:].abs().max() == 0
    torch.testing.assert_close(padded.delta(), linear, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(12, 20), (20, 12), (10, 10)])
def test_factor_is_the_truncated_svd(shape):
    """Against torch.linalg.svd in fp64 (the reference): wide, tall and square ΔW of rank 6, truncated to 3."""
    g = torch.Generator().manual_seed(3)
    spectrum = torch.diag(torch.tensor([3.0, 2, 1, 0.5, 0.1, 0.01]))
    delta = torch.randn(shape[0], 6, generator=g) @ spectrum @ torch.randn(6, shape[1], generator=g)
    U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
    three = factor(delta, 3)
    torch.testing.assert_close(three.delta().double(), (U[:, :3] * S[:3]) @ Vh[:3], rtol=0, atol=1e-5)
    torch.testing.assert_close(factor(delta, 6).delta(), delta, rtol=0, atol=1e-5)
    zero = factor(torch.zeros(shape), 2)  # no singular value: zero factors, no NaN
    assert zero.A.abs().max() == 0 and zero.B.abs().max() == 0


def test_ties_hand_computed():
    """density 0.5 keeps k = 2 of 4 entries per expert; weights (1, 0.5, 2).

    ΔW_1 = [ 4, −1,  2, −3] → trim → [4,  0, 0, −3]
    ΔW_2 = [−2,  3,  1, −5] → trim → [0,  3, 0, −5]
    ΔW_3 = [ 1, −6, .5,  2] → trim → [0, −6, 0,  2]
    Σ trimmed = [4, −3, 0, −6] → elected sign γ = [+, −, 0, −]
    column 0: only ΔŴ_1 = 4 agrees → 1·4 / 1 = 4
    column 1: ΔŴ_3 = −6 agrees (ΔŴ_2 = 3 does not) → 2·(−6) / 1 = −12
    column 2: nothing survives the trim → 0
    column 3: ΔŴ_1 = −3 and ΔŴ_2 = −5 agree (ΔŴ_3 = 2 does not) → (1·(−3) + 0.5·(−5)) / 2 = −2.75
    The result is rank 1, so the rank-1 SVD factoring is exact."""
    experts = [row(4, -1, 2, -3), row(-2, 3, 1, -5), row(1, -6, 0.5, 2)]
    assert trim(torch.tensor([[4.0, -1, 2, -3]]), 0.5).tolist() == [[4, 0, 0, -3]]
    merged = merge_layer(experts, [1.0, 0.5, 2.0], "ties", density=0.5, rank=1)
    torch.testing.assert_close(merged.delta(), torch.tensor([[4.0, -12.0, 0.0, -2.75]]), rtol=0, atol=1e-6)


def test_ties_exact_cancellation_is_zero_as_in_the_paper():
    """Σ = 1 + (−1) = 0: the paper's sgn(0) = 0 elects no expert (peft would keep the +1)."""
    merged = merge_layer([row(1.0, 2.0), row(-1.0, 2.0)], [1.0, 1.0], "ties", density=1.0, rank=1)
    torch.testing.assert_close(merged.delta(), torch.tensor([[0.0, 2.0]]), rtol=0, atol=1e-6)


# The CPU draws torch.rand(1, 4) twice from torch.Generator().manual_seed(0) (pinned; CPU-specific):
#   expert 1: [0.4963, 0.7682, 0.0885, 0.1320] → keep (U < 0.5) [1, 0, 1, 1]
#   expert 2: [0.3074, 0.6341, 0.4901, 0.8964] → keep            [1, 0, 1, 0]
DARE_EXPERTS = ((2, -4, 6, 8), (1, 3, -5, 7))


def test_dare_masks_are_the_pinned_draws():
    g = torch.Generator().manual_seed(0)
    assert (torch.rand(1, 4, generator=g) < 0.5).int().tolist() == [[1, 0, 1, 1]]
    assert (torch.rand(1, 4, generator=g) < 0.5).int().tolist() == [[1, 0, 1, 0]]


def test_dare_linear_hand_computed():
    """Drop with the masks above and rescale by 1/0.5: ΔW̃_1 = [4, 0, 12, 16], ΔW̃_2 = [2, 0, −10, 0];
    weights (1, 0.5): [4 + 1, 0, 12 − 5, 16 + 0] = [5, 0, 7, 16]."""
    experts = [row(*v) for v in DARE_EXPERTS]
    merged = merge_layer(experts, [1.0, 0.5], "dare_linear", density=0.5, rank=1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(merged.delta(), torch.tensor([[5.0, 0.0, 7.0, 16.0]]), rtol=0, atol=1e-5)


def test_dare_ties_hand_computed():
    """ΔW̃ as above; Σ = [6, 0, 2, 16] → γ = [+, 0, +, +]; weights (1, 0.5):
    column 0: both agree → (1·4 + 0.5·2) / 2 = 2.5; column 1: 0; column 2: only 12 agrees → 12;
    column 3: only 16 → 16."""
    experts = [row(*v) for v in DARE_EXPERTS]
    merged = merge_layer(experts, [1.0, 0.5], "dare_ties", density=0.5, rank=1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(merged.delta(), torch.tensor([[2.5, 0.0, 12.0, 16.0]]), rtol=0, atol=1e-5)


def test_dare_is_seeded_and_unbiased():
    g = torch.Generator().manual_seed(2)
    experts = [random_layer(8, 6, 2, 2.0, g), random_layer(8, 6, 2, 2.0, g)]

    def dare(seed: int, method: str = "dare_linear") -> torch.Tensor:
        return merge_layer(experts, [0.7, 0.5], method, density=0.3, rank=6,
                           generator=torch.Generator().manual_seed(seed)).delta()

    for method in ("dare_linear", "dare_ties"):
        torch.testing.assert_close(dare(0, method), dare(0, method), rtol=0, atol=0)
        assert not torch.allclose(dare(0, method), dare(1, method))
    # density 1 keeps everything: dare_linear is linear
    full = merge_layer(experts, [0.7, 0.5], "dare_linear", density=1.0, rank=6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(full.delta(), merge_layer(experts, [0.7, 0.5], "linear").delta(), rtol=0, atol=1e-5)
    # E[ΔW̃] = ΔW: on a 400×500 all-ones ΔW at density 0.3 the mean of ΔW̃ has std √(0.3·0.7/2e5)/0.3 ≈ 0.0034,
    # so 0.01 is ~3 std
    from mmalign.align.merge import dare as drop

    dropped = drop(torch.ones(400, 500), 0.3, torch.Generator().manual_seed(0))
    assert dropped.unique().tolist() == [0.0, pytest.approx(1 / 0.3)]
    assert dropped.mean().item() == pytest.approx(1.0, abs=0.01)


def test_experts_must_match_layers_and_shapes():
    a = LoraState(layers={"x.to_q": row(1, 2), "x.to_k": row(3, 4)}, family="sdxl", prefix="unet", source="a")
    b = LoraState(layers={"x.to_q": row(1, 2)}, family="sdxl", prefix="unet", source="b")
    with pytest.raises(ConfigError, match=r"one\.safetensors and two\.safetensors adapt different layers "
                                          r"\(target modules \['to_k', 'to_q'\] vs \['to_q'\]\)"):
        check_compatible([a, b], ["one.safetensors", "two.safetensors"])
    b = LoraState(layers={"y.to_q": row(1, 2), "x.to_k": row(3, 4)}, family="sdxl", prefix="unet", source="b")
    with pytest.raises(ConfigError, match=r"one and two adapt different layers \(2 layers in one only, e\.g\. x\.to_q\)"):
        check_compatible([a, b], ["one", "two"])
    c = LoraState(layers={"x.to_q": row(1, 2, 3), "x.to_k": row(3, 4)}, family="sdxl", prefix="unet", source="c")
    with pytest.raises(ConfigError, match=r"one and three disagree on layer x\.to_q: ΔW of shape \[1, 2\] vs \[1, 3\]"):
        check_compatible([a, c], ["one", "three"])
    d = LoraState(layers=dict(a.layers), family="sd3", prefix="transformer", source="d")
    with pytest.raises(ConfigError, match="four is a LoRA for sd3 and one one for sdxl"):
        check_compatible([a, d], ["one", "four"])
    # different ranks are fine: they merge in ΔW space
    e = LoraState(layers={k: LoraLayer(A=torch.ones(3, v.A.shape[1]), B=torch.ones(1, 3), alpha=3.0) for k, v in a.layers.items()},
                  family="sdxl", prefix="unet", source="e")
    check_compatible([a, e], ["one", "five"])


# --- on a tiny SDXL: the merged LoRA in diffusers ---------------------------------------------------


def random_lora(unet: nn.Module, rank: int, alpha: float, seed: int, targets: tuple[str, ...] = TARGETS) -> LoraState:
    """A LoRA with random A and B (std 0.1) on every ``targets`` Linear of ``unet``."""
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name, module in unet.named_modules():
        if isinstance(module, nn.Linear) and name.endswith(targets):
            layers[name] = LoraLayer(A=0.1 * torch.randn(rank, module.in_features, generator=g),
                                     B=0.1 * torch.randn(module.out_features, rank, generator=g), alpha=alpha)
    return LoraState(layers=layers, family="sdxl", prefix="unet", source=f"random-{seed}")


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    """A tiny SDXL folder and two random LoRAs for it (ranks 2 and 3, α/r = 2 and 0.5), saved with write_lora."""
    from diffusers import UNet2DConditionModel

    from mmalign.generators.tiny import save_tiny

    root = tmp_path_factory.mktemp("merge")
    base = save_tiny("sdxl", root / "tiny-sdxl")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    states = [random_lora(unet, 2, 4.0, seed=1), random_lora(unet, 3, 1.5, seed=2)]
    paths = [write_lora(root / f"e{i + 1}", s) for i, s in enumerate(states)]
    return base, paths, states


def unet_output(unet: nn.Module) -> torch.Tensor:
    """The UNet's prediction on fixed random inputs (latents 4×16×16, 7 text tokens of width 80, SDXL time ids)."""
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 16, 16, generator=g)
    text = torch.randn(2, 7, 80, generator=g)
    added = {"text_embeds": torch.randn(2, 24, generator=g), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}
    with torch.no_grad():
        return unet(sample, torch.tensor([500, 20]), encoder_hidden_states=text, added_cond_kwargs=added).sample


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")  # peft, on diffusers' second adapter
def test_merged_linear_equals_diffusers_multi_adapter_inference(experts, tmp_path):
    """The acceptance test: load(merged) == load(e1, "a") + load(e2, "b") + set_adapters([a, b], [0.7, 0.5])
    == the base UNet with W + Σ_k w_k·(α_k/r_k)·B_k·A_k written into each weight by hand
    == load_generator(base, lora=merged)."""
    from diffusers import StableDiffusionXLPipeline

    base, (e1, e2), states = experts
    out = merge([(e1, 0.7), (e2, 0.5)], method="linear", out=tmp_path / "merged", progress=False)
    assert (out / LORA_FILE).is_file()

    multi = StableDiffusionXLPipeline.from_pretrained(base)
    multi.load_lora_weights(e1, adapter_name="a")
    multi.load_lora_weights(e2, adapter_name="b")
    multi.set_adapters(["a", "b"], [0.7, 0.5])
    merged = StableDiffusionXLPipeline.from_pretrained(base)
    merged.load_lora_weights(out)
    by_hand = StableDiffusionXLPipeline.from_pretrained(base).unet
    with torch.no_grad():
        for name, module in by_hand.named_modules():
            if name in states[0].layers:
                module.weight += 0.7 * states[0].layers[name].delta() + 0.5 * states[1].layers[name].delta()

    expected = unet_output(by_hand)
    assert (expected - unet_output(StableDiffusionXLPipeline.from_pretrained(base).unet)).abs().max() > 1e-2  # the LoRAs matter
    torch.testing.assert_close(unet_output(multi.unet), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(unet_output(merged.unet), expected, rtol=0, atol=1e-5)
    from mmalign.generators import load_generator

    torch.testing.assert_close(unet_output(load_generator(base, device="cpu", lora=out).denoiser), expected, rtol=0, atol=1e-5)


def test_every_method_writes_a_lora_that_reads_back(experts, tmp_path):
    _, (e1, e2), _ = experts
    linear = read_lora(merge([e1, e2], weights=[0.7, 0.5], out=tmp_path / "linear", progress=False))
    assert {layer.A.shape[0] for layer in linear.layers.values()} == {5}
    svd = read_lora(merge([e1, e2], "svd", weights=[0.7, 0.5], rank=5, out=tmp_path / "svd", progress=False))
    for key, layer in linear.layers.items():
        torch.testing.assert_close(svd.layers[key].delta(), layer.delta(), rtol=0, atol=1e-6)
    for method in ("ties", "dare_linear", "dare_ties"):
        merged = read_lora(merge([e1, e2], method, rank=4, seed=3, out=tmp_path / method, progress=False))
        assert set(merged.layers) == set(linear.layers)
        assert {(layer.A.shape[0], layer.scale) for layer in merged.layers.values()} == {(4, 1.0)}
    again = read_lora(merge([e1, e2], "dare_ties", rank=4, seed=3, out=tmp_path / "again", progress=False))
    key = next(iter(again.layers))
    torch.testing.assert_close(again.layers[key].delta(), read_lora(tmp_path / "dare_ties").layers[key].delta(), rtol=0, atol=0)


def test_api_errors_before_any_work(experts, tmp_path):
    _, (e1, e2), _ = experts
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="weights given twice"):
        merge([(e1, 0.7), (e2, 0.5)], weights=[1, 1], out=out)
    with pytest.raises(ConfigError, match="weight 2 \\('x'\\) is not a finite number"):
        merge([(e1, 0.7), (e2, "x")], out=out)
    with pytest.raises(ConfigError, match="not one of linear | svd"):
        merge([e1, e2], method="mean", out=out)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=r"exists and holds other files \(\['a.txt'\]\)"):
        merge([e1, e2], out=tmp_path / "notes")
    assert not out.exists() and (tmp_path / "notes" / "a.txt").is_file()


# --- the CLI through its real entry point -----------------------------------------------------------


def test_cli_merge_main_path(experts, tmp_path):
    _, (e1, e2), states = experts
    proc = mmalign_cli("merge", str(e1), str(e2), "--weights", "0.7,0.5", "--out", str(tmp_path / "m"), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "merged 2 LoRAs (linear)" in proc.stdout
    merged = read_lora(tmp_path / "m")
    for key, layer in merged.layers.items():
        expected = 0.7 * states[0].layers[key].delta() + 0.5 * states[1].layers[key].delta()
        torch.testing.assert_close(layer.delta(), expected, rtol=0, atol=1e-6)


def test_cli_merge_help():
    proc = mmalign_cli("merge", "--help")
    assert proc.returncode == 0
    for text in ("--method", "linear", "dare_ties", "--weights", "--density", "--rank", "--seed", "--out"):
        assert text in proc.stdout


@pytest.fixture(scope="module")
def foreign(experts, tmp_path_factory):
    """LoRAs the experts cannot merge with: one for a tiny SD UNet (another architecture), one on fewer targets."""
    from mmalign.generators.tiny import build_tiny

    root = tmp_path_factory.mktemp("foreign")
    sd = random_lora(build_tiny("sd", 0).unet, 2, 2.0, seed=4)
    sd_same_family = LoraState(layers=sd.layers, family="sdxl", prefix="unet", source="sd")
    _, _, states = experts
    fewer = LoraState(layers={k: v for k, v in states[0].layers.items() if k.endswith(("to_q", "to_v"))},
                      family="sdxl", prefix="unet", source="fewer")
    return write_lora(root / "sd-arch", sd_same_family), write_lora(root / "fewer-targets", fewer)


CLI_ERRORS = {
    "missing file": (["{e1}", "{missing}"], "missing"),
    "another architecture": (["{e1}", "{arch}"], "sd-arch disagree on layer"),
    "mismatched targets": (["{e1}", "{fewer}"], "fewer-targets adapt different layers "
                                                "(target modules ['to_k', 'to_out.0', 'to_q', 'to_v'] vs ['to_q', 'to_v'])"),
    "weight not a number": (["{e1}", "{e2}", "--weights", "0.7,abc"], "weight 2 ('abc') is not a number"),
    "weights count": (["{e1}", "{e2}", "--weights", "0.7"], "1 weights for 2 LoRAs"),
    "density 0": (["{e1}", "{e2}", "--method", "ties", "--rank", "2", "--density", "0"], "density 0.0 is outside (0, 1]"),
    "density 1.5": (["{e1}", "{e2}", "--method", "dare_ties", "--rank", "2", "--density", "1.5"], "density 1.5 is outside"),
    "rank missing": (["{e1}", "{e2}", "--method", "svd"], "svd needs a rank (--rank R)"),
    "rank 0": (["{e1}", "{e2}", "--method", "svd", "--rank", "0"], "rank 0 must be a whole number of at least 1"),
    "rank with linear": (["{e1}", "{e2}", "--rank", "2"], "use method svd to truncate"),
    "unknown method": (["{e1}", "{e2}", "--method", "average"], "'average' is not one of linear | svd"),
}


@pytest.mark.parametrize("case", list(CLI_ERRORS))
def test_cli_merge_error_paths(case, experts, foreign, tmp_path):
    """Each bad input: exit 1, one error line naming the problem and the file, no output folder."""
    _, (e1, e2), _ = experts
    args, message = CLI_ERRORS[case]
    names = {"e1": e1, "e2": e2, "missing": tmp_path / "missing", "arch": foreign[0], "fewer": foreign[1]}
    out = tmp_path / "out"
    run = mmalign_cli if case == "missing file" else mmalign_in_process  # one through the console entry point
    line = error_line(run("merge", *[a.format(**names) for a in args], "--out", str(out)))
    assert message in line, line
    assert not out.exists()
