"""`convert --format c-array`: the generated C++ compiles with the host g++, holds the exact bytes, and its
tokenizer gives the same ids as the real `tokenizers` WordPiece on SST-2 sentences."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeslm.errors import ModelError
from edgeslm.export.carray import c_string, resolver_calls, write_c_array

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
  // the row main.cc copies into the model's input for token 1012 (".")
  for (int j = 0; j < kHidden; ++j) printf("%d%c", (int)g_embedding[1012 * kHidden + j], j + 1 < kHidden ? ' ' : '\n');
  return 0;
}
"""


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    """Bytes shaped like a flatbuffer (TFL3 identifier at offset 4); every byte value, odd length."""
    return b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 3 + b"\x00\xff\x7f"


HIDDEN = 3


@pytest.fixture(scope="module")
def table() -> np.ndarray:
    """An int8 embedding table for the MiniLM vocabulary, every int8 value present."""
    return (np.arange(30522 * HIDDEN) % 256 - 128).astype(np.int8).reshape(30522, HIDDEN)


@pytest.fixture(scope="module")
def built(
    tiny_base: Path, model_bytes: bytes, table: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("carray")
    (root / "m.tflite").write_bytes(model_bytes)
    tokenizer = (tiny_base / "tokenizer.json").read_text()
    ops = ["FULLY_CONNECTED", "BATCH_MATMUL", "SOFTMAX", "FULLY_CONNECTED"]
    out = write_c_array(root / "m.tflite", root / "c", ['neg "x"', "pos"], tokenizer, SEQ, table, ops, 12345)
    (out / "driver.cc").write_text(DRIVER)
    exe = root / "driver"
    cmd = ["g++", "-std=c++17", "-O0", "-Wall", "-Wextra", "-Werror", "-I", str(out)]
    subprocess.run([*cmd, str(out / "driver.cc"), str(out / "model_data.cc"), "-o", str(exe)], check=True)
    return out, exe


def test_array_compiles_and_holds_the_exact_bytes(built: tuple[Path, Path], model_bytes: bytes) -> None:
    out, exe = built
    dump = out.parent / "dump.bin"
    done = subprocess.run([str(exe), str(dump)], capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert lines[0].split() == [str(len(model_bytes)), "2", "neg", '"x"', "pos", "[CLS]"]
    assert dump.read_bytes() == model_bytes
    header = (out / "model_data.h").read_text()
    assert "alignas(16) extern const unsigned char g_model_data[];" in header
    assert f"constexpr int kSeqLen = {SEQ};" in header
    assert "alignas(16) const unsigned char g_model_data[] = {" in (out / "model_data.cc").read_text()
    assert "kArenaSize = 16441;" in (out / "main.cc").read_text()  # the measured arena + a 4 KiB margin


def test_embedding_rows_and_resolver_follow_the_model(built: tuple[Path, Path], table: np.ndarray) -> None:
    out, exe = built
    done = subprocess.run([str(exe), os.devnull, "."], capture_output=True, text=True, check=True)
    assert list(map(int, done.stdout.splitlines()[-1].split())) == table[1012].tolist()
    header = (out / "model_data.h").read_text()
    assert f"constexpr int kHidden = {HIDDEN};" in header and "typedef int8_t EmbeddingT;" in header
    main = (out / "main.cc").read_text()
    assert "MicroMutableOpResolver<3>" in main  # each op once, none the model does not use
    assert "ops.AddBatchMatMul();" in main and "ops.AddFullyConnected();" in main and "EmbeddingLookup" not in main


def test_embedding_table_must_match_the_vocabulary(tmp_path: Path, tiny_base: Path, model_bytes: bytes) -> None:
    (tmp_path / "m.tflite").write_bytes(model_bytes)
    tok = (tiny_base / "tokenizer.json").read_text()
    with pytest.raises(ModelError, match=r"embedding table is int8 \(100, 4\), the tokenizer has 30522 pieces"):
        write_c_array(tmp_path / "m.tflite", tmp_path / "c", ["a"], tok, 8, np.zeros((100, 4), np.int8), [])
    assert not (tmp_path / "c").exists()


# TFLM's C++ sources are on no package registry reachable here (the issue 7 note lists what was checked), so the
# example is compiled against these declarations of the TFLM API it uses (signatures as in tensorflow/tflite-micro).
# This checks the generated code's C++, not TFLM itself.
_TFLM_STUBS = {
    "tensorflow/lite/schema/schema_generated.h": "namespace tflite { struct Model {}; "
    "inline const Model* GetModel(const void*) { return nullptr; } }\n",
    "tensorflow/lite/micro/micro_mutable_op_resolver.h": "#include <cstdint>\n"
    "typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;\n"
    "namespace tflite { class MicroOpResolver {}; template <unsigned int N> class MicroMutableOpResolver : "
    "public MicroOpResolver { public: "
    + " ".join(f"TfLiteStatus Add{n}() {{ return kTfLiteOk; }}" for n in ("BatchMatMul", "FullyConnected", "Softmax"))
    + " }; }\n",
    "tensorflow/lite/micro/micro_interpreter.h": "#include <cstddef>\n#include <cstdint>\n"
    '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"\n'
    '#include "tensorflow/lite/schema/schema_generated.h"\n'
    "typedef enum { kTfLiteFloat32 = 1, kTfLiteInt8 = 9 } TfLiteType;\n"
    "typedef struct { int size; int data[4]; } TfLiteIntArray;\n"
    "typedef union { int32_t* i32; float* f; int8_t* int8; char* raw; } TfLitePtrUnion;\n"
    "typedef struct { TfLiteType type; TfLitePtrUnion data; TfLiteIntArray* dims; } TfLiteTensor;\n"
    "namespace tflite { class MicroInterpreter { public: MicroInterpreter(const Model*, const MicroOpResolver&, "
    "uint8_t*, size_t) {} TfLiteStatus AllocateTensors() { return kTfLiteOk; } "
    "TfLiteStatus Invoke() { return kTfLiteOk; } TfLiteTensor* input(size_t) { return nullptr; } "
    "TfLiteTensor* output(size_t) { return nullptr; } }; }\n",
}


def test_example_main_compiles_against_the_tflm_api_it_uses(built: tuple[Path, Path], tmp_path: Path) -> None:
    out, _ = built
    for name, text in _TFLM_STUBS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"#pragma once\n{text}")
    cmd = ["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-I", str(out), "-I", str(tmp_path)]
    done = subprocess.run([*cmd, str(out / "main.cc")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_resolver_calls_name_tflm_kernels() -> None:
    assert resolver_calls(["SQUARED_DIFFERENCE", "RSQRT", "BATCH_MATMUL", "RSQRT"]) == [
        "ops.AddBatchMatMul();",
        "ops.AddRsqrt();",
        "ops.AddSquaredDifference();",
    ]


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
    got = [list(map(int, line.split())) for line in done.stdout.splitlines()[1:-1]]
    tok = load_tokenizer((tiny_base / "tokenizer.json").read_text(), SEQ)
    assert got == [e.ids for e in (tok.encode(t) for t in texts)]


def test_not_a_flatbuffer_is_refused(tmp_path: Path, tiny_base: Path) -> None:
    (tmp_path / "m.tflite").write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="not a TFLite flatbuffer"):
        tok = (tiny_base / "tokenizer.json").read_text()
        write_c_array(tmp_path / "m.tflite", tmp_path / "c", ["a"], tok, 8, np.zeros((30522, 2), np.int8), [])
    assert not (tmp_path / "c").exists()


def test_non_wordpiece_tokenizer_is_refused(tmp_path: Path, model_bytes: bytes) -> None:
    (tmp_path / "m.tflite").write_bytes(model_bytes)
    bpe = json.dumps({"model": {"type": "BPE", "vocab": {}}})
    with pytest.raises(ModelError, match="WordPiece only.*'BPE'"):
        write_c_array(tmp_path / "m.tflite", tmp_path / "c", ["a"], bpe, 8, np.zeros((1, 2), np.int8), [])


def test_c_string_escapes_quotes_backslashes_and_utf8() -> None:
    assert c_string('a"b\\c?') == '"a\\042b\\134c\\077"'
    assert c_string("é") == '"\\303\\251"'
