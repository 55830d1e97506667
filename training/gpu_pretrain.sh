#!/usr/bin/env bash
# `make pretrain` on a bare GPU machine in one call: python3 with torch and transformers, but neither MLflow nor
# this project's environments. The few packages it lacks (the fonts the pages are drawn with, zss) travel in
# .gpu/site, made here by `make gpu-bundle`. The batches grow to the largest that fits the GPU and the schedule
# to the steps that fit MINUTES; the run's metrics go into the export for `--record`.
#
#   INVOICE_GIT_COMMIT=<sha> bash training/gpu_pretrain.sh MINUTES [pretrain options, e.g. --init training/base]
#
# writes the exported base reader as $OUT/base.tgz.part-* (15 MB pieces: transfers that cap a file's size take
# them) and the log as $OUT/pretrain.log. Back here, MLflow and the model card:
#   cat PARTS | tar xz -C var/pretrain/gpu
#   invoice model pretrain --record var/pretrain/gpu/base --export-to var/pretrain/export
set -euo pipefail
minutes=${1:?usage: training/gpu_pretrain.sh MINUTES [pretrain options]}
shift
out=${OUT:-var/pretrain/gpu}
work=$(mktemp -d)
mkdir -p "$out"
export PYTHONPATH="$PWD/.gpu/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -m training.cli model pretrain --no-tracking --fit-batch --max-minutes "$minutes" \
    --export-to "$work/base" "$@" 2>&1 | tee "$out/pretrain.log"
tar czf - -C "$work" base | split -b 15M - "$out/base.tgz.part-"
