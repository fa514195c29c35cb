"""The vLLM servers rollouts run on, seen as the graph's model sets, and how each step's new weights reach them.

Every role is served by one or more servers; rollout k uses, for each role, the (k mod n)-th server serving it, so
several servers share a step evenly. After an update a server gets what it serves: in lora mode each trained role's
adapter, reloaded in place under the role's name; otherwise the policy's full weights, reloaded from a saved folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from emo_r3.agents.backends.vllm.adapters import load_adapters
from emo_r3.agents.backends.vllm.weights import reload_weights
from emo_r3.agents.call_record import ROLES, Role
from emo_r3.agents.chat_model import ChatModel
from emo_r3.agents.model_specs import load_chat_model
from emo_r3.training.config import PolicyMode, RolloutConfig, ServedPolicy


class ServedPolicies:
    def __init__(
        self, rollout: RolloutConfig, servers: Sequence[ServedPolicy], mode: PolicyMode, policy_of: Mapping[Role, str]
    ) -> None:
        self.rollout = rollout
        self.servers = list(servers)
        self.mode = mode
        self.policy_of = dict(policy_of)

    def _serving(self, role: Role) -> list[ServedPolicy]:
        return [server for server in self.servers if role in server.roles]

    def model_sets(self) -> list[dict[Role, ChatModel]]:
        """One role -> ChatModel mapping per rollout slot; as many slots as the most-served role has servers."""
        count = max(len(self._serving(role)) for role in ROLES)
        clients: dict[tuple[str, str | None], ChatModel] = {}
        sets = []
        for slot in range(count):
            models: dict[Role, ChatModel] = {}
            for role in ROLES:
                serving = self._serving(role)
                server = serving[slot % len(serving)]
                adapter = role if self.mode == "lora" and role in self.policy_of else None
                key = (server.base_url, adapter)
                if key not in clients:
                    clients[key] = load_chat_model(self.rollout.spec(server, adapter))
                models[role] = clients[key]
            sets.append(models)
        return sets

    def push(self, weights: Mapping[str, Path]) -> None:
        """Give every server the new weights of what it serves: policy (or, in lora mode, adapter) name -> folder."""
        for server in self.servers:
            trained = [role for role in server.roles if role in self.policy_of]
            if not trained:
                continue
            spec = self.rollout.spec(server)
            if self.mode == "lora":
                load_adapters(spec, {role: weights[role] for role in trained})
            else:
                policies = {self.policy_of[role] for role in trained}
                for policy in sorted(policies):
                    reload_weights(spec, weights[policy])
