"""The Generator on this flavour's held-out instructions. See self_lengthen/stages/heldout.py."""
from self_lengthen.stages import heldout
from self_lengthen.stages.common import flavour_dir_of

if __name__ == "__main__":
    heldout.main(flavour_dir_of(__file__))
