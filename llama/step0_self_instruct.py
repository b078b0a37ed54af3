"""step0: grow long-writing instructions from this flavour's seeds. See self_lengthen/stages/self_instruct.py."""
from self_lengthen.stages import self_instruct
from self_lengthen.stages.common import flavour_dir_of

if __name__ == "__main__":
    self_instruct.main(flavour_dir_of(__file__))
