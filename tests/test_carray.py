"""`convert --format c-array`: the generated C++ compiles with the host g++, holds the exact bytes, and its
tokenizer gives the same ids as the real `tokenizers` WordPiece on SST-2 sentences."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgeslm.errors import ModelError
from edgeslm.export.carray import c_string, write_c_array

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs the host g++ to compile the C array")

SEQ = 24
DRIVER = r"""
#include <cstdint>
#include <cstdio>
#include "model_data.h"
#include "tokenizer.h"
int main(int argc, char** argv) {
  if ((uintptr_t)g_model_data % 16 != 0) return 3;
  FILE* f = fopen(argv[1], "wb");
  fwrite(g_model_data, 1, g_model_data_len, f);
  fclose(f);
  printf("%u %d %s %s %s\n", g_model_data_len, kNumLabels, g_labels[0], g_labels[1], g_vocab[kClsId]);
  for (int a = 2; a < argc; ++a) {
    int ids[kSeqLen];
    int n = tokenize(argv[a], ids);
    for (int i = 0; i < n; ++i) printf("%d%c", ids[i], i + 1 < n ? ' ' : '\n');
  }
  return 0;
}
"""


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    """Bytes shaped like a flatbuffer (TFL3 identifier at offset 4); every byte value, odd length."""
    return b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 3 + b"\x00\xff\x7f"


@pytest.fixture(scope="module")
def built(tiny_base: Path, model_bytes: bytes, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("carray")
    (root / "m.tflite").write_bytes(model_bytes)
    tokenizer = (tiny_base / "tokenizer.json").read_text()
    out = write_c_array(root / "m.tflite", root / "c", ['neg "x"', "pos"], tokenizer, SEQ, arena_bytes=12345)
    (out / "driver.cc").write_text(DRIVER)
    exe = root / "driver"
    cmd = ["g++", "-std=c++17", "-O0", "-Wall", "-Wextra", "-Werror", "-I", str(out)]
    subprocess.run([*cmd, str(out / "driver.cc"), str(out / "model_data.cc"), "-o", str(exe)], check=True)
    return out, exe


def test_array_compiles_and_holds_the_exact_bytes(built: tuple[Path, Path], model_bytes: bytes) -> None:
    out, exe = built
    dump = out.parent / "dump.bin"
    done = subprocess.run([str(exe), str(dump)], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [str(len(model_bytes)), "2", "neg", '"x"', "pos", "[CLS]"]
    assert dump.read_bytes() == model_bytes
    header = (out / "model_data.h").read_text()
    assert "alignas(16) extern const unsigned char g_model_data[];" in header
    assert f"constexpr int kSeqLen = {SEQ};" in header
    assert "alignas(16) const unsigned char g_model_data[] = {" in (out / "model_data.cc").read_text()
    assert "kArenaSize = 16441;" in (out / "main.cc").read_text()  # the measured arena + a 4 KiB margin


def test_object_size_covers_the_model(built: tuple[Path, Path], model_bytes: bytes) -> None:
    out, _ = built
    obj = out.parent / "model_data.o"
    subprocess.run(["g++", "-std=c++17", "-c", str(out / "model_data.cc"), "-o", str(obj)], check=True)
    nm = subprocess.run(["nm", "-S", "-C", str(obj)], capture_output=True, text=True, check=True).stdout
    (line,) = [ln for ln in nm.splitlines() if ln.endswith(" g_model_data")]
    assert int(line.split()[1], 16) == len(model_bytes)


def test_c_tokenizer_matches_tokenizers_on_real_sentences(built: tuple[Path, Path], tiny_base: Path) -> None:
    from edgeslm.runtime.predictor import load_tokenizer

    texts = [
        "it 's a charming and often affecting journey .",
        "unflinchingly bleak and desperate",
        "the year's most intriguing, surprising film -- xyzzyqwv!",
        "A Very LONG sentence " * 8,
    ]
    _, exe = built
    done = subprocess.run([str(exe), os.devnull, *texts], capture_output=True, text=True, check=True)
    got = [list(map(int, line.split())) for line in done.stdout.splitlines()[1:]]
    tok = load_tokenizer((tiny_base / "tokenizer.json").read_text(), SEQ)
    assert got == [e.ids for e in (tok.encode(t) for t in texts)]


def test_not_a_flatbuffer_is_refused(tmp_path: Path, tiny_base: Path) -> None:
    (tmp_path / "m.tflite").write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="not a TFLite flatbuffer"):
        write_c_array(tmp_path / "m.tflite", tmp_path / "c", ["a"], (tiny_base / "tokenizer.json").read_text(), 8)
    assert not (tmp_path / "c").exists()


def test_non_wordpiece_tokenizer_is_refused(tmp_path: Path, model_bytes: bytes) -> None:
    (tmp_path / "m.tflite").write_bytes(model_bytes)
    bpe = json.dumps({"model": {"type": "BPE", "vocab": {}}})
    with pytest.raises(ModelError, match="WordPiece only.*'BPE'"):
        write_c_array(tmp_path / "m.tflite", tmp_path / "c", ["a"], bpe, 8)


def test_c_string_escapes_quotes_backslashes_and_utf8() -> None:
    assert c_string('a"b\\c?') == '"a\\042b\\134c\\077"'
    assert c_string("é") == '"\\303\\251"'
