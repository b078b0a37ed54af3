"""The pipeline stages of one macro-iteration: self_instruct (step0), generate (step1), extend (step2)."""
