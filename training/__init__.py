"""Joint RL over graph trajectories (rewards, advantages, rows, losses, trainers). Not built yet."""
