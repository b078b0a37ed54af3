"""step2 Extender: extended responses. See self_lengthen/stages/extend.py."""
from self_lengthen.stages import extend
from self_lengthen.stages.common import flavour_dir_of

if __name__ == "__main__":
    extend.main(flavour_dir_of(__file__))
