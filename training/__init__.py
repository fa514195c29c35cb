"""Joint RL over graph trajectories. So far the pure math: rewards (RER, graph terms, per-role credit),
advantages (GRPO, Dr.GRPO, RLOO, REINFORCE++-baseline) and policy/KL losses; rows and trainers come next."""
