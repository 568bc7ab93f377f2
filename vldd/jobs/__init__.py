"""What a user runs: distill (the orchestrator), finetune, evaluate, teacher, plan, reproduce, ablate. Jobs read
configs, drive the stages and write run directories."""
