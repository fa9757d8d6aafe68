"""Train, validate, test or predict with vitkit:
`python train.py fit --config configs/classification/digits_speedrun.yaml`."""
from vitkit.cli import main

if __name__ == "__main__":
    main()
