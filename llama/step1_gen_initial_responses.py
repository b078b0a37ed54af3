"""step1 Generator: initial responses. See self_lengthen/stages/generate.py."""
from self_lengthen.stages import generate
from self_lengthen.stages.common import flavour_dir_of

if __name__ == "__main__":
    generate.main(flavour_dir_of(__file__))
