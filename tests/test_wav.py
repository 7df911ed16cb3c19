"""WAV reading/writing: every PCM width, channel mixing, band-limited resampling, clear refusals."""
from __future__ import annotations

import struct
import wave

import numpy
import pytest

from audiogw.shared.wav import WavError, read_wav, tone, write_wav


def write_raw_wav(path, data: bytes, rate: int, channels: int, width: int) -> None:
    """A file written by the stdlib (plain WAVE_FORMAT_PCM) from raw little-endian frames."""
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(data)


def riff(fmt: bytes, data: bytes, extra_chunks: bytes = b"") -> bytes:
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunks
    body += b"data" + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def extensible_fmt(channels: int, rate: int, bits: int, subformat: int) -> bytes:
    block = channels * bits // 8
    guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    return struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * block, block, bits, 22, bits, 0) + \
        struct.pack("<H", subformat) + guid_tail


def dominant_frequency(samples: numpy.ndarray, rate: int) -> float:
    spectrum = numpy.abs(numpy.fft.rfft(samples.astype(numpy.float64) * numpy.hanning(len(samples))))
    return float(numpy.fft.rfftfreq(len(samples), 1.0 / rate)[numpy.argmax(spectrum)])


def rms(samples: numpy.ndarray) -> float:
    return float(numpy.sqrt(numpy.mean(samples.astype(numpy.float64) ** 2)))


def test_tone_is_int16_sine_of_the_requested_length_and_level():
    samples = tone(1000.0, 0.5, 8000, amplitude=0.5)
    assert samples.dtype == numpy.int16
    assert len(samples) == 4000
    assert abs(int(samples.max()) - round(0.5 * 32767)) <= 1
    assert dominant_frequency(samples, 8000) == pytest.approx(1000.0, abs=5)
    assert samples[0] == 0


@pytest.mark.parametrize("arguments", [(5000.0, 1.0, 8000), (0.0, 1.0, 8000), (440.0, -1.0, 8000)])
def test_tone_refuses_impossible_requests(arguments):
    with pytest.raises(ValueError):
        tone(*arguments)
    with pytest.raises(ValueError):
        tone(440.0, 1.0, 8000, amplitude=1.5)


def test_write_then_read_16bit_mono_at_the_same_rate_is_exact(tmp_path):
    samples = tone(440.0, 1.0, 8000)
    path = tmp_path / "tone.wav"
    write_wav(path, samples, 8000)
    with wave.open(str(path)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, 8000)
    back = read_wav(path, 8000)
    assert back.dtype == numpy.int16
    numpy.testing.assert_array_equal(back, samples)


def test_write_wav_refuses_anything_but_int16_mono(tmp_path):
    with pytest.raises(ValueError, match="int16"):
        write_wav(tmp_path / "x.wav", numpy.zeros(10, dtype=numpy.float32), 8000)
    with pytest.raises(ValueError, match="mono"):
        write_wav(tmp_path / "x.wav", numpy.zeros((10, 2), dtype=numpy.int16), 8000)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_every_pcm_width_reads_to_the_same_int16(tmp_path, width):
    reference = tone(440.0, 0.25, 8000, amplitude=0.5)
    as_float = reference.astype(numpy.float64) / 32768.0
    if width == 1:
        data = numpy.clip(numpy.round(as_float * 128 + 128), 0, 255).astype(numpy.uint8).tobytes()
        tolerance = 256 + 1  # 8-bit keeps 8 bits of the 16
    elif width == 2:
        data = reference.astype("<i2").tobytes()
        tolerance = 0
    elif width == 3:
        values = numpy.round(as_float * (1 << 23)).astype("<i4")
        data = values.view(numpy.uint8).reshape(-1, 4)[:, :3].tobytes()
        tolerance = 1
    else:
        data = numpy.round(as_float * (1 << 31)).astype("<i4").tobytes()
        tolerance = 1
    path = tmp_path / f"width{width}.wav"
    write_raw_wav(path, data, 8000, 1, width)
    back = read_wav(path, 8000)
    assert len(back) == len(reference)
    assert numpy.max(numpy.abs(back.astype(numpy.int32) - reference)) <= tolerance


def test_negative_24bit_samples_keep_their_sign(tmp_path):
    values = numpy.array([-(1 << 23), -1, 0, 1, (1 << 23) - 1], dtype="<i4")
    data = values.view(numpy.uint8).reshape(-1, 4)[:, :3].tobytes()
    path = tmp_path / "signs.wav"
    write_raw_wav(path, data, 8000, 1, 3)
    numpy.testing.assert_array_equal(read_wav(path, 8000), [-32768, 0, 0, 0, 32767])


def test_channels_are_averaged(tmp_path):
    left = tone(440.0, 0.25, 8000, amplitude=0.4)
    right = numpy.zeros_like(left)
    stereo = numpy.column_stack([left, right]).astype("<i2").tobytes()
    path = tmp_path / "stereo.wav"
    write_raw_wav(path, stereo, 8000, 2, 2)
    back = read_wav(path, 8000)
    assert len(back) == len(left)
    assert numpy.max(numpy.abs(back.astype(numpy.int32) - left.astype(numpy.int32) / 2)) <= 1


def test_opposite_channels_cancel(tmp_path):
    left = tone(440.0, 0.25, 8000)
    stereo = numpy.column_stack([left, -left]).astype("<i2").tobytes()
    path = tmp_path / "cancel.wav"
    write_raw_wav(path, stereo, 8000, 2, 2)
    assert numpy.max(numpy.abs(read_wav(path, 8000))) <= 1


def test_48k_resamples_to_8k_keeping_frequency_length_and_level(tmp_path):
    path = tmp_path / "prompt48k.wav"
    write_wav(path, tone(440.0, 1.0, 48000, amplitude=0.5), 48000)
    back = read_wav(path, 8000)
    assert len(back) == 8000
    assert dominant_frequency(back, 8000) == pytest.approx(440.0, abs=5)
    middle = back[1000:7000]  # away from the filter's edges
    assert rms(middle) == pytest.approx(0.5 * 32767 / numpy.sqrt(2), rel=0.02)


def test_resampling_is_band_limited_not_interpolated(tmp_path):
    # 6 kHz cannot exist at 8 kHz (Nyquist 4 kHz). A proper low-pass removes it;
    # linear interpolation or decimation would fold it down to an audible 2 kHz.
    path = tmp_path / "high48k.wav"
    write_wav(path, tone(6000.0, 1.0, 48000, amplitude=0.5), 48000)
    back = read_wav(path, 8000)
    assert rms(back[500:-500]) < 0.01 * (0.5 * 32767 / numpy.sqrt(2))


def test_upsampling_8k_to_16k(tmp_path):
    path = tmp_path / "tone8k.wav"
    write_wav(path, tone(1000.0, 0.5, 8000), 8000)
    back = read_wav(path, 16000)
    assert len(back) == 8000
    assert dominant_frequency(back, 16000) == pytest.approx(1000.0, abs=5)


def test_44100_stereo_24bit_extensible_file_as_sox_and_ffmpeg_write_it(tmp_path):
    # Python 3.11's wave module refuses WAVE_FORMAT_EXTENSIBLE; read_wav must not.
    reference = tone(440.0, 0.5, 44100, amplitude=0.5).astype(numpy.float64) / 32768.0
    values = numpy.round(numpy.column_stack([reference, reference]) * (1 << 23)).astype("<i4")
    data = values.view(numpy.uint8).reshape(-1, 4)[:, :3].tobytes()
    path = tmp_path / "extensible.wav"
    path.write_bytes(riff(extensible_fmt(2, 44100, 24, 1), data, extra_chunks=b"LIST\x04\x00\x00\x00abcd"))
    back = read_wav(path, 8000)
    assert len(back) == round(0.5 * 8000)
    assert dominant_frequency(back, 8000) == pytest.approx(440.0, abs=5)


def test_float32_file(tmp_path):
    reference = tone(440.0, 0.25, 8000, amplitude=0.5)
    data = (reference.astype(numpy.float64) / 32768.0).astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 8000, 8000 * 4, 4, 32)
    path = tmp_path / "float.wav"
    path.write_bytes(riff(fmt, data))
    back = read_wav(path, 8000)
    assert numpy.max(numpy.abs(back.astype(numpy.int32) - reference)) <= 1


def test_empty_data_is_an_empty_array(tmp_path):
    path = tmp_path / "empty.wav"
    write_wav(path, numpy.zeros(0, dtype=numpy.int16), 48000)
    back = read_wav(path, 8000)
    assert back.dtype == numpy.int16 and len(back) == 0


def test_truncated_data_keeps_the_whole_frames(tmp_path):
    path = tmp_path / "cut.wav"
    write_wav(path, numpy.arange(100, dtype=numpy.int16), 8000)
    blob = path.read_bytes()
    path.write_bytes(blob[:-3])  # cut mid-sample; the header still claims 100 samples
    back = read_wav(path, 8000)
    numpy.testing.assert_array_equal(back, numpy.arange(len(back), dtype=numpy.int16))
    assert 98 <= len(back) <= 99


def test_missing_file_is_a_wav_error(tmp_path):
    with pytest.raises(WavError, match="cannot read"):
        read_wav(tmp_path / "nowhere.wav")


def test_not_a_wav_file(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 10)
    with pytest.raises(WavError, match="notes.wav"):
        read_wav(path)


def test_truncated_header(tmp_path):
    path = tmp_path / "stub.wav"
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    with pytest.raises(WavError):
        read_wav(path)


def test_compressed_encoding_is_refused_by_name(tmp_path):
    fmt = struct.pack("<HHIIHH", 6, 1, 8000, 8000, 1, 8)  # A-law
    path = tmp_path / "alaw.wav"
    path.write_bytes(riff(fmt, b"\xd5" * 800))
    with pytest.raises(WavError, match="0x0006"):
        read_wav(path)


def test_wav_error_is_a_value_error():
    assert issubclass(WavError, ValueError)
