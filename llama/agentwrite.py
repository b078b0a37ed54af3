"""AgentWrite: long responses by plan, then section by section. See self_lengthen/stages/agentwrite.py."""
from self_lengthen.stages import agentwrite
from self_lengthen.stages.common import flavour_dir_of

if __name__ == "__main__":
    agentwrite.main(flavour_dir_of(__file__))
