#!/bin/sh
# The study of examples/digits-study/README.md, as it was run (from the repository root).
# 1. Train each model through the 7 default intervals (schedule data, 4 epochs per stage); the
#    work directory keeps one checkpoint per interval. One seed: this run is for the weights.
# 2. Analyse those checkpoints again with 2 seeds, the boundary synthesizer and all four metrics.
# 3. Correlate every data-free score with test accuracy, and draw the figures.
set -e
for model in resnet18 timm:mobilenetv3_small_050; do
    name=$(echo "$model" | tr ':' '-')
    python -m toolkit analyze --model "$model" --dataset digits --seeds 1 \
        --out "results/train-$name.nc" --noplots
    python -m toolkit analyze --model "$model" --dataset digits --seeds 2 \
        --synthesizer boundary --metrics cosine,zscore,mg,madv \
        --checkpoints "results/train-$name.work" --out "results/study-$name.nc" --noplots
done
python -m toolkit quality results/study-resnet18.nc results/study-timm-mobilenetv3_small_050.nc \
    --out examples/digits-study/quality.png --overwrite
for name in resnet18 timm-mobilenetv3_small_050; do
    python -m toolkit plot "results/study-$name.nc" --out "results/study-$name.figures" \
        --figures means,spreads,boundary --overwrite
done
cp results/study-resnet18.figures/means.png examples/digits-study/means-resnet18.png
cp results/study-timm-mobilenetv3_small_050.figures/means.png examples/digits-study/means-mobilenetv3.png
cp results/study-resnet18.figures/boundary.png examples/digits-study/boundary-resnet18.png
# 4. The README's tables and summary.json, from the two study files.
python examples/digits-study/summarize.py --write
