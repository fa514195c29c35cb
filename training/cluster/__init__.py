"""`trainer: openrlhf`: the graph's roles trained jointly on a Ray cluster with OpenRLHF's DeepSpeed actors.

`cluster_trainer` orchestrates a step as the `local` trainer does; `group_update` is one step's update on the policy
groups; `policy_group` is one policy's DeepSpeed ranks and reference; `rank_schedule` deals rows over the ranks;
`actors` are the Ray actor classes with the project's loss; `experiences` turns rows into OpenRLHF's `Experience`;
`openrlhf_args` maps the training config onto OpenRLHF's flags; `server_launch` starts vLLM servers on the cluster.
Most of these import OpenRLHF, DeepSpeed and Ray: import them only for `trainer: openrlhf`.
"""
