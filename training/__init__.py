"""Joint RL of the graph's roles on whole-trajectory rewards.

The math is short pure functions: `rewards` (EMO-R3's RER, graph terms, per-role credit), `advantages` (GRPO,
Dr. GRPO, RLOO, REINFORCE++-baseline), `losses` (clipped policy gradient, dual clip, TIS, KL). Then trajectories
become token-exact `rows`, `logprobs` computes the trainer's side of them, `policies` maps roles to trainable weights
(shared, LoRA per role, or separate models), `update` takes one optimizer step, `checkpoint` saves and resumes, and
`local_trainer` orchestrates it all behind `emo-r3 train`. Datasets come from `emo_r3.evals.datasets`.
"""
