# What ran on the lent GPU for issue 3 (see benchmarks/gpu_train.py). The carried folder .gpu/ (git-ignored)
# holds ../shared/data/{sst2/*.tsv,clinc150/data_full.json} under .gpu/data and MiniLM's config.json,
# tokenizer.json and an FP16 copy of model.safetensors under .gpu/base (the FP32 file alone is over the 64 MiB
# a call carries); the base is widened back to FP32 there. Output: models.tar.NNN parts for `gpu_train.py unpack`.
set -eo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src EDGESLM_DATA_DIR=$PWD/.gpu/data
nvidia-smi -L || true; python3 -c "import torch, transformers, tokenizers, onnxruntime; print(torch.__version__, transformers.__version__, tokenizers.__version__, onnxruntime.__version__, torch.cuda.is_available())"
mkdir -p /tmp/base && cp .gpu/base/config.json .gpu/base/tokenizer.json /tmp/base/
python3 -c "
from safetensors.torch import load_file, save_file
w=load_file('.gpu/base/model.fp16.safetensors'); save_file({k:v.float() if v.is_floating_point() else v for k,v in w.items()}, '/tmp/base/model.safetensors')"
start=$(date +%s)
python3 benchmarks/gpu_train.py train --base /tmp/base --cache /tmp/gc 2>&1 | grep -v "^teacher soft labels\|^inference" | tee $OUT/train.log
echo "train took $(( $(date +%s) - start )) s" | tee -a $OUT/train.log
python3 benchmarks/gpu_train.py pack --cache /tmp/gc --to /tmp/parts | tee -a $OUT/train.log
cp /tmp/parts/models.tar.000 /tmp/parts/models.tar.001 /tmp/parts/models.tar.002 /tmp/parts/models.tar.003 $OUT/ 2>/dev/null || true
ls -la /tmp/parts
