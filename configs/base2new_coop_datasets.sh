#!/bin/sh
# Base-to-new over the 11 CoOp data sets (CoOp's layout under DATA_ROOT), three seeds each, ViT-B/16:
#   sh configs/base2new_coop_datasets.sh METHOD CONFIG DATA_ROOT WEIGHTS      e.g.
#   sh configs/base2new_coop_datasets.sh coop+ship configs/coop_ship_vit_b16_base2new.yaml data ViT-B-16.pt
set -e
method=$1 config=$2 root=$3 weights=$4
for name in ImageNet Caltech101 OxfordPets StanfordCars OxfordFlowers Food101 FGVCAircraft SUN397 DescribableTextures EuroSAT UCF101; do
    clipadapt run "$method" --config "$config" --protocol base2new --shots 16 --seeds 1,2,3 \
        --dataset "coop:$name:$root" --model ViT-B-16 --pretrained "$weights" --out "runs/$method-base2new-$name"
done
