"""Media I/O: round trips for every format, every bad input, folders, atomic saves, previews."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmalign.errors import ConfigError, InputError
from mmalign.media import (
    AUDIO_EXTS,
    EXTENSIONS,
    IMAGE_EXTS,
    VIDEO_EXTS,
    AudioBatch,
    ImageBatch,
    VideoBatch,
    decode_image_bytes,
    image_grid,
    load_image,
    load_folder,
    load_media,
    modality_of,
    resize,
    save_media,
    video_contact_sheet,
)


def smooth_images(b: int = 2, h: int = 16, w: int = 24) -> ImageBatch:
    """Gradients: JPEG keeps them well, and any transpose or channel swap shows."""
    y = torch.linspace(0, 1, h)[:, None].expand(h, w)
    x = torch.linspace(0, 1, w)[None, :].expand(h, w)
    return ImageBatch(torch.stack([torch.stack([x, y, (x + y) / 2 * (i + 1) / b]) for i in range(b)]))


def scene_videos(b: int = 1, t: int = 8, size: int = 32, fps: float = 8.0) -> VideoBatch:
    """Flat-colored squares moving right on a dark background, like the synthetic world."""
    px = torch.full((b, t, 3, size, size), 0.08)
    for i in range(b):
        for k in range(t):
            px[i, k, :, 8:20, 2 + 2 * k + i : 14 + 2 * k + i] = torch.tensor([0.85, 0.15, 0.2])[:, None, None]
    return VideoBatch(px, fps=fps)


def tone(n: int = 4000, channels: int = 1, sample_rate: int = 16000) -> AudioBatch:
    t = torch.arange(n) / sample_rate
    x = torch.stack([0.5 * torch.sin(2 * torch.pi * 440 * (c + 1) * t) for c in range(channels)])
    return AudioBatch(x[None], sample_rate=sample_rate)


def truncate(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("fmt, tol", [("png", 0.5 / 255 + 1e-6), ("webp", 0.5 / 255 + 1e-6), ("npy", 0.0), ("jpg", 0.03)])
def test_image_round_trip(tmp_dir, fmt, tol):
    batch = smooth_images()
    paths = save_media(batch, tmp_dir / "out", format=fmt)
    assert [p.name for p in paths] == [f"00000.{fmt}", f"00001.{fmt}"]
    for i, p in enumerate(paths):
        item = load_media(p)
        assert isinstance(item, ImageBatch) and item.pixels.shape == (1, 3, 16, 24)
        err = (item.pixels - batch.pixels[i : i + 1]).abs()
        assert (err.mean() if fmt == "jpg" else err.max()) <= tol
        assert item.metadata == [{"path": str(p), "name": p.stem}]
    assert no_temp_files(tmp_dir / "out")


@pytest.mark.parametrize("fmt, fps, mean_tol", [("mp4", 8.0, 0.02), ("webm", 12.0, 0.02), ("gif", 10.0, 0.5 / 255 + 1e-6), ("npy", 8.0, 0.0)])
def test_video_round_trip(tmp_dir, fmt, fps, mean_tol):
    batch = scene_videos(b=2, fps=fps)
    paths = save_media(batch, tmp_dir, names=["a", "b"], format=fmt)
    loaded = [load_media(p, fps=fps) for p in paths]
    for i, item in enumerate(loaded):
        assert isinstance(item, VideoBatch) and item.pixels.shape == (1, 8, 3, 32, 32)
        assert item.fps == pytest.approx(fps)
        assert (item.pixels - batch.pixels[i : i + 1]).abs().mean() <= mean_tol
    # the moving square is where it should be in the last frame (red channel high at its center)
    assert loaded[0].pixels[0, -1, 0, 14, 8 + 14] > 0.7 and loaded[0].pixels[0, -1, 0, 14, 3] < 0.2


@pytest.mark.parametrize("fmt, tol", [("wav", 2 / 32768), ("flac", 2 / 32768), ("npy", 0.0)])
def test_audio_round_trip(tmp_dir, fmt, tol):
    batch = tone(channels=2, sample_rate=22050)
    (path,) = save_media(batch, tmp_dir, names=[f"tone.{fmt}"])
    assert path.name == f"tone.{fmt}"
    item = load_media(path, sample_rate=22050)
    assert isinstance(item, AudioBatch) and item.samples.shape == (1, 2, 4000) and item.sample_rate == 22050
    assert (item.samples - batch.samples).abs().max() <= tol


@pytest.mark.parametrize("fmt", ["ogg", "mp3"])
def test_lossy_audio_round_trip(tmp_dir, fmt):
    """OGG (Vorbis) and MP3 are in the one suffix table, so load_media and save_media must handle them."""
    batch = tone(n=16000, channels=1, sample_rate=16000)
    (path,) = save_media(batch, tmp_dir, names=[f"tone.{fmt}"])
    item = load_media(path)
    assert isinstance(item, AudioBatch) and item.sample_rate == 16000 and item.samples.shape[1] == 1
    assert abs(item.samples.shape[2] - 16000) < 2000  # encoders add or drop a frame of padding
    rms = item.samples.pow(2).mean().sqrt().item()
    assert rms == pytest.approx(0.5 / 2**0.5, rel=0.1)  # a 0.5-amplitude sine survives lossy coding


def test_one_suffix_table():
    assert IMAGE_EXTS == (".png", ".jpg", ".jpeg", ".webp")
    assert VIDEO_EXTS == (".mp4", ".webm", ".gif")
    assert AUDIO_EXTS == (".wav", ".flac", ".ogg", ".mp3")
    assert [modality_of(f"x{e.upper()}") for e in (".jpg", ".gif", ".mp3")] == ["image", "video", "audio"]
    assert EXTENSIONS[".npy"] == "array" and len(EXTENSIONS) == 12
    for bad in ("x.npy", "x.bmp", "x"):
        with pytest.raises(InputError, match="unknown media suffix"):
            modality_of(bad)


def _exif_rotated_jpeg() -> bytes:
    """A 4 (wide) × 2 (high) JPEG, left half red, whose EXIF says "rotate 90° clockwise to display"."""
    import io

    img = Image.new("RGB", (4, 2), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 2, 2))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=100)
    return buf.getvalue()


def test_image_bytes_and_files_decode_alike_with_exif_orientation(tmp_dir):
    data = _exif_rotated_jpeg()
    (tmp_dir / "r.jpg").write_bytes(data)
    from_bytes, from_file = decode_image_bytes(data), load_image(tmp_dir / "r.jpg")
    assert from_bytes.pixels.shape == (1, 3, 4, 2)  # displayed upright: 2 wide, 4 high
    assert torch.equal(from_bytes.pixels, from_file.pixels)
    assert from_bytes.pixels[0, 0, 0, 1] > 0.8 and from_bytes.pixels[0, 2, -1, 1] > 0.8  # red on top, blue below
    with pytest.raises(InputError, match="row 3: cannot decode image"):
        decode_image_bytes(b"not an image", where="train.parquet row 3")


def test_pil_and_numpy_conversions():
    batch = smooth_images()
    pils = batch.to_pil()
    assert [im.size for im in pils] == [(24, 16)] * 2 and pils[0].mode == "RGB"
    again = ImageBatch.from_pil(pils, prompts=["a", "b"])
    assert (again.pixels - batch.pixels).abs().max() <= 0.5 / 255 + 1e-6 and again.prompts == ["a", "b"]
    assert ImageBatch.from_pil(pils[0].convert("L")).pixels.shape == (1, 3, 16, 24)
    np.testing.assert_array_equal(ImageBatch.from_numpy(batch.to_numpy()).pixels, batch.pixels)
    u8 = np.zeros((16, 24, 3), np.uint8)
    u8[..., 1] = 255
    assert ImageBatch.from_numpy(u8).pixels[0, 1].min() == 1.0

    video = scene_videos(b=2)
    frames = video.to_pil()
    assert len(frames) == 2 and len(frames[0]) == 8
    assert (VideoBatch.from_pil(frames, fps=8).pixels - video.pixels).abs().max() <= 0.5 / 255 + 1e-6
    np.testing.assert_array_equal(VideoBatch.from_numpy(video.to_numpy(), fps=8).pixels, video.pixels)

    audio = tone(channels=2)
    np.testing.assert_array_equal(AudioBatch.from_numpy(audio.to_numpy()).samples, audio.samples)
    assert AudioBatch.from_numpy(np.zeros(10, np.float32)).samples.shape == (1, 1, 10)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ImageBatch.from_numpy(np.zeros((8, 8, 4), np.float32)), r"shape"),
        (lambda: ImageBatch.from_numpy(np.zeros((0, 8, 3), np.float32)), r"shape"),
        (lambda: ImageBatch.from_numpy(np.full((8, 8, 3), 2.0, np.float32)), r"expected \[0, 1\]"),
        (lambda: ImageBatch.from_numpy(np.full((8, 8, 3), np.nan, np.float32)), r"non-finite"),
        (lambda: ImageBatch.from_numpy(np.zeros((8, 8, 3), np.int64)), r"dtype"),
        (lambda: VideoBatch.from_numpy(np.zeros((0, 8, 8, 3), np.float32)), r"T > 0"),
        (lambda: AudioBatch.from_numpy(np.zeros((1, 1, 1, 5), np.float32)), r"shape"),
        (lambda: AudioBatch.from_numpy(np.full(5, 1.5, np.float32)), r"expected \[-1, 1\]"),
        (lambda: ImageBatch.from_pil([Image.new("RGB", (4, 4)), Image.new("RGB", (5, 4))]), r"one size"),
    ],
)
def test_bad_arrays(make, match):
    with pytest.raises(InputError, match=match):
        make()


# ---------------------------------------------------------------------------------------------
# every bad file names itself and its problem


def _zero_frame_mp4(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()  # header only, no frame ever encoded
    return path


def _nan_wav(path: Path) -> Path:
    x = np.zeros(1000, np.float32)
    x[10] = np.nan
    sf.write(str(path), x, 16000, subtype="FLOAT")
    return path


def _npy(path: Path, arr: np.ndarray) -> Path:
    np.save(path, arr)
    return path


@pytest.fixture
def good_files(tmp_dir):
    out = tmp_dir / "good"
    return {
        "png": save_media(smooth_images(1), out, names=["img.png"])[0],
        "mp4": save_media(scene_videos(1), out, names=["vid.mp4"])[0],
        "gif": save_media(scene_videos(1), out, names=["vid.gif"])[0],
        "wav": save_media(tone(), out, names=["snd.wav"])[0],
        "flac": save_media(tone(16000), out, names=["snd.flac"])[0],
        "jpg": save_media(smooth_images(1), out, names=["img.jpg"])[0],
    }


BAD_CASES = {
    "truncated_png": (lambda d, g: truncate(g["png"], d / "cut.png"), r"truncated"),
    "truncated_jpg": (lambda d, g: truncate(g["jpg"], d / "cut.jpg"), r"truncated"),
    "truncated_mp4": (lambda d, g: truncate(g["mp4"], d / "cut.mp4"), r"truncated"),
    "truncated_gif": (lambda d, g: truncate(g["gif"], d / "cut.gif"), r"truncated"),
    "truncated_wav": (lambda d, g: truncate(g["wav"], d / "cut.wav"), r"truncated"),
    "truncated_flac": (lambda d, g: truncate(g["flac"], d / "cut.flac"), r"truncated"),
    "empty_png": (lambda d, g: truncate(g["png"], d / "empty.png", 0.0), r"empty file \(0 bytes\)"),
    "empty_mp4": (lambda d, g: truncate(g["mp4"], d / "empty.mp4", 0.0), r"empty file \(0 bytes\)"),
    "empty_wav": (lambda d, g: truncate(g["wav"], d / "empty.wav", 0.0), r"empty file \(0 bytes\)"),
    "zero_frame_mp4": (lambda d, g: _zero_frame_mp4(d / "zero.mp4"), r"zero frames"),
    "nan_wav": (lambda d, g: _nan_wav(d / "nan.wav"), r"non-finite"),
    "nan_npy": (lambda d, g: _npy(d / "nan.npy", np.full((4, 4, 3), np.nan, np.float32)), r"non-finite"),
    "inf_audio_npy": (lambda d, g: _npy(d / "inf.npy", np.array([0.0, np.inf], np.float32)), r"non-finite"),
    "wrong_shape_npy": (lambda d, g: _npy(d / "shape.npy", np.zeros((4, 4, 4), np.float32)), r"shape \(4, 4, 4\)"),
    "wrong_shape_5d_npy": (lambda d, g: _npy(d / "five.npy", np.zeros((1, 2, 4, 4, 3), np.float32)), r"shape"),
    "out_of_range_npy": (lambda d, g: _npy(d / "range.npy", np.full((4, 4, 3), 255.0, np.float32)), r"expected \[0, 1\]"),
    "unknown_extension": (lambda d, g: (d / "notes.txt").write_text("hello") and d / "notes.txt", r"unknown extension '\.txt'"),
    "missing_file": (lambda d, g: d / "missing.png", r"no such file"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_file_raises_input_error_naming_the_file(tmp_dir, good_files, case):
    make, problem = BAD_CASES[case]
    path = make(tmp_dir, good_files)
    with pytest.raises(InputError, match=problem) as info:
        load_media(path)
    assert path.name in str(info.value)


def test_folder_skip_reports_each_bad_file(tmp_dir, good_files):
    folder = tmp_dir / "mixed"
    save_media(smooth_images(3), folder, names=["a", "b", "c"])
    truncate(folder / "b.png", folder / "b_cut.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "manifest.jsonl").write_text("{}\n")
    with pytest.raises(InputError, match="b_cut.png"):
        load_folder(folder)
    batch, report = load_folder(folder, on_error="skip")
    assert isinstance(batch, ImageBatch) and len(batch) == 3
    assert [p.name for p in report.loaded] == ["a.png", "b.png", "c.png"]
    assert [(p.name, "truncated" in why or "0 bytes" in why) for p, why in report.skipped] == [
        ("b_cut.png", True),
        ("empty.png", True),
    ]
    assert [p.name for p in report.ignored] == ["manifest.jsonl"]
    assert "skipped b_cut.png" in str(report)
    assert [m["name"] for m in batch.metadata] == ["a", "b", "c"]


def test_folder_of_only_bad_files(tmp_dir):
    (tmp_dir / "x.png").write_bytes(b"")
    with pytest.raises(InputError, match="no loadable image files"):
        load_folder(tmp_dir, on_error="skip")


def test_folder_image_sizes_must_agree_unless_resized(tmp_dir):
    save_media(smooth_images(1, 16, 24), tmp_dir, names=["big"])
    save_media(smooth_images(1, 8, 12), tmp_dir, names=["small"])
    with pytest.raises(InputError, match=r"sizes \(H, W\) differ: .*big\.png has \(16, 24\), .*small\.png has \(8, 12\); pass size="):
        load_folder(tmp_dir)
    batch, _ = load_folder(tmp_dir, size=(8, 12))
    assert batch.pixels.shape == (2, 3, 8, 12)
    assert (batch.pixels[0] - resize(smooth_images(1, 16, 24), (8, 12)).pixels[0]).abs().max() < 1 / 255 + 1e-6


def test_folder_videos_frame_counts_sizes_and_fps(tmp_dir):
    save_media(scene_videos(1, t=8), tmp_dir, names=["long"])
    save_media(scene_videos(1, t=4), tmp_dir, names=["short"])
    with pytest.raises(InputError, match=r"frame counts differ: .*long\.mp4 has 8, .*short\.mp4 has 4; pass frames="):
        load_folder(tmp_dir)
    batch, _ = load_folder(tmp_dir, frames=6)
    assert batch.pixels.shape == (2, 6, 3, 32, 32)
    # the short video was padded by repeating its last frame
    assert torch.equal(batch.pixels[1, 4], batch.pixels[1, 3]) and torch.equal(batch.pixels[1, 5], batch.pixels[1, 3])
    save_media(scene_videos(1, t=6, size=16), tmp_dir, names=["tiny"])
    with pytest.raises(InputError, match=r"sizes \(H, W\) differ"):
        load_folder(tmp_dir, frames=6)
    assert load_folder(tmp_dir, frames=6, size=16)[0].pixels.shape == (3, 6, 3, 16, 16)
    save_media(scene_videos(1, t=6, size=16, fps=24), tmp_dir, names=["fast"])
    with pytest.raises(InputError, match=r"frame rates differ"):
        load_folder(tmp_dir, frames=6, size=16)


def test_folder_audio_lengths_and_rates(tmp_dir):
    save_media(tone(4000), tmp_dir, names=["a"])
    save_media(tone(3000), tmp_dir, names=["b"])
    with pytest.raises(InputError, match=r"lengths \(samples\) differ: .*a\.wav has 4000, .*b\.wav has 3000"):
        load_folder(tmp_dir)
    batch, _ = load_folder(tmp_dir, length=3500)
    assert batch.samples.shape == (2, 1, 3500) and batch.samples[1, 0, 3000:].abs().max() == 0
    save_media(tone(3500, sample_rate=8000), tmp_dir, names=["c"])
    with pytest.raises(InputError, match="sample rates differ"):
        load_folder(tmp_dir, length=3500)


def test_folder_modalities(tmp_dir):
    save_media(smooth_images(2), tmp_dir)
    save_media(tone(), tmp_dir, names=["snd"])
    with pytest.raises(InputError, match="mixes 2 image, 1 audio files; pass modality="):
        load_folder(tmp_dir)
    images, report = load_folder(tmp_dir, modality="image")
    assert len(images) == 2 and [p.name for p in report.ignored] == ["snd.wav"]
    audio, _ = load_folder(tmp_dir, modality="audio")
    assert isinstance(audio, AudioBatch)
    with pytest.raises(ConfigError, match="on_error"):
        load_folder(tmp_dir, on_error="ignore")


# ---------------------------------------------------------------------------------------------
# saving


def test_save_is_atomic_and_keeps_the_old_file_on_failure(tmp_dir):
    (first,) = save_media(scene_videos(1), tmp_dir, names=["clip"])
    before = first.read_bytes()
    odd = VideoBatch(torch.rand(1, 2, 3, 15, 15))
    with pytest.raises(InputError, match="even width and height"):
        save_media(odd, tmp_dir, names=["clip"])
    assert first.read_bytes() == before and no_temp_files(tmp_dir)
    (gif,) = save_media(odd, tmp_dir, names=["clip.gif"])  # GIF takes any size
    assert load_media(gif).pixels.shape == (1, 2, 3, 15, 15)


def test_save_names_and_formats(tmp_dir):
    images = smooth_images(2)
    with pytest.raises(InputError, match="2 items"):
        save_media(images, tmp_dir, names=["one"])
    with pytest.raises(InputError, match="plain file names"):
        save_media(images, tmp_dir, names=["a", "../b"])
    with pytest.raises(InputError, match="unique"):
        save_media(images, tmp_dir, names=["a", "a"])
    with pytest.raises(InputError, match="cannot write image items as '.wav'"):
        save_media(images, tmp_dir, format="wav")
    with pytest.raises(InputError, match=r"cannot write image item 1 as 'b.mp4' \(a video format\)"):
        save_media(images, tmp_dir, names=["a.png", "b.mp4"])
    paths = save_media(images, tmp_dir, names=["x.jpg", "y"], format="webp")
    assert [p.name for p in paths] == ["x.jpg", "y.webp"]
    # names loaded from files are reused when saving again
    loaded, _ = load_folder(tmp_dir)
    assert [p.name for p in save_media(loaded, tmp_dir / "copy")] == ["x.png", "y.png"]
    with pytest.raises(InputError, match=r"item 0 .*expected \[0, 1\]"):
        save_media(ImageBatch(torch.full((1, 3, 4, 4), 1.5)), tmp_dir)


# ---------------------------------------------------------------------------------------------
# previews


def test_image_grid_layout():
    batch = ImageBatch(torch.stack([torch.full((3, 4, 6), v) for v in (0.0, 0.5, 1.0)]))
    grid = image_grid(batch, nrow=2, padding=1, pad_value=1.0)
    assert grid.size == (2 * 6 + 3, 2 * 4 + 3)  # 2 per row -> 2 rows
    arr = np.asarray(grid)
    assert arr[1, 1, 0] == 0 and arr[1, 8, 0] == 128 and arr[6, 1, 0] == 255 and arr[6, 8, 0] == 255
    assert image_grid(batch, nrow=8).size == (3 * 6 + 4 * 2, 4 + 2 * 2)
    with pytest.raises(InputError, match="video_contact_sheet"):
        image_grid(scene_videos(1))


def test_video_contact_sheet_picks_frames():
    px = torch.stack([torch.full((3, 4, 4), k / 7) for k in range(8)])[None].repeat(2, 1, 1, 1, 1)
    sheet = video_contact_sheet(VideoBatch(px), frames=3, padding=0)
    assert sheet.size == (3 * 4, 2 * 4)
    assert [np.asarray(sheet)[0, 4 * c, 0] for c in range(3)] == [0, round(255 * 4 / 7), 255]  # frames 0, 4, 7
    assert video_contact_sheet(VideoBatch(px), frames=[1, -1], padding=0).size == (8, 8)
    with pytest.raises(InputError, match=re.escape("out of range")):
        video_contact_sheet(VideoBatch(px), frames=[8])


def test_a_truncated_image_is_an_error_even_when_pil_is_told_to_load_truncated_images(tmp_path, monkeypatch):
    """Some libraries (VBench's AMT utils, pyiqa) set PIL's process-wide LOAD_TRUNCATED_IMAGES at import;
    loading still refuses a truncated file, and the flag is left as it was."""
    from PIL import ImageFile

    from mmalign.media import ImageBatch, load_image, save_media

    path = save_media(ImageBatch(torch.rand(1, 3, 64, 64)), tmp_path, names=["a.png"])[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(InputError, match="a.png"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
