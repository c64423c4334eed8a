"""The Profile: the joint forward+backward graph as plain records, with bytes and times.

The Profile is the only thing the planner reads. It is JSON (never pickle), keyed by a
graph hash that changes whenever the model, the input shapes or the dtypes change.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from typing import Any

PROFILE_SCHEMA_VERSION = 2

# Roles of graph nodes.
PARAM, BUFFER, INPUT, TANGENT = "param", "buffer", "input", "tangent"
FORWARD, BACKWARD = "forward", "backward"
# Nodes an operator variant adds (see profiler.variants): a forward node computing what the
# variant keeps (a packed mask), and the backward node that runs instead of the original.
VARIANT_FORWARD, VARIANT_BACKWARD = "variant_forward", "variant_backward"
CONSTANT_ROLES = (PARAM, BUFFER, INPUT)


class ProfileFormatError(ValueError):
    """A profile file that cannot be read: truncated, edited or of another schema."""


@dataclass
class NodeRecord:
    """One node of the joint graph (placeholders and compute nodes; not the output node).

    ``storages`` are the ids of every storage the node's value references (all outputs of a
    multi-output op); ``new_storages`` those it allocates. A node with no new storages is an
    alias (view, getitem, detach) and is free to re-run, unless it computes its value into
    an input's storage (``writes_into``, see ``profiler.inplace_backward``).
    """

    index: int
    name: str
    target: str
    role: str
    inputs: list[int]
    storages: list[int]
    new_storages: list[int]
    shape: list[Any] = field(default_factory=list)
    dtype: str = ""
    time_s: float = 0.0
    flops: int = 0
    random: bool = False
    desc: str = ""
    module: str = ""
    variant: str = ""  # for variant nodes: the variant's registered name
    site: int = -1  # for variant nodes: the backward node the variant replaces
    workspace_bytes: int = 0  # temporary bytes while the node runs, beyond its outputs
    writes_into: int = -1  # an in-place node: the input whose storage it writes its value to
    # Strides of its value(s), as ``shape``; empty in profiles made before they were
    # recorded (their ops never write in place: planner.in_place)
    strides: list[Any] = field(default_factory=list)

    @property
    def is_alias(self) -> bool:
        return not self.new_storages and self.writes_into < 0


@dataclass
class OutputRecord:
    """One returned value of the joint graph: a user output, a buffer update or a gradient."""

    kind: str  # "user" | "mutation" | "grad"
    node: int
    target: str = ""  # buffer or parameter name, or the output position for "user"


@dataclass
class Profile:
    """Everything the planner needs to know about one model at one input shape."""

    graph_hash: str
    model: str
    device: str  # "cpu" or "cuda"
    device_name: str
    dtype: str
    torch_version: str
    input_shapes: list[list[int]]
    input_dtypes: list[str]
    timing: str  # "measured" | "estimated"
    nodes: list[NodeRecord]
    storage_bytes: dict[int, int]
    outputs: list[OutputRecord]
    autocast: str = ""  # "" or the torch.autocast dtype the graph was captured under
    # Forward targets -> whether the op has an element-wise out= overload
    # (profiler.out_overloads): the planner decides its writes in place without torch.
    # Empty in profiles made before it was recorded; the planner then asks torch.
    pointwise_out: dict[str, bool] = field(default_factory=dict)
    schema_version: int = PROFILE_SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["storage_bytes"] = {str(k): v for k, v in self.storage_bytes.items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Profile":
        try:
            if d.get("schema_version") != PROFILE_SCHEMA_VERSION:
                raise ProfileFormatError(
                    f"profile schema_version {d.get('schema_version')!r} is not "
                    f"{PROFILE_SCHEMA_VERSION}: profile the model again")
            d = dict(d)
            unknown = unknown_fields(cls, d, "profile")
            if unknown:
                raise ProfileFormatError(f"{unknown}: profile the model again with this one")
            d["nodes"] = [NodeRecord(**n) for n in d["nodes"]]
            d["outputs"] = [OutputRecord(**o) for o in d["outputs"]]
            d["storage_bytes"] = {int(k): int(v) for k, v in d["storage_bytes"].items()}
            profile = cls(**d)
        except ProfileFormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ProfileFormatError(f"not a valid profile: {e}") from e
        profile.check()
        return profile

    def check(self) -> None:
        """Raise ProfileFormatError when the records are not self-consistent."""
        for i, n in enumerate(self.nodes):
            if n.index != i:
                raise ProfileFormatError(f"node {i} has index {n.index}")
            if any(j >= i or j < 0 for j in n.inputs):
                raise ProfileFormatError(f"node {n.name} has an input that is not before it")
            if any(s not in self.storage_bytes for s in n.storages):
                raise ProfileFormatError(f"node {n.name} references an unknown storage")
        if not isinstance(self.pointwise_out, dict) or not all(
                isinstance(k, str) and isinstance(v, bool) for k, v in self.pointwise_out.items()):
            raise ProfileFormatError("pointwise_out is not a table of op names to true/false")

    def save(self, path: str) -> None:
        """Write the profile as JSON, atomically."""
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str) -> "Profile":
        return cls.from_json(read_json(path, what="profile"))

    # Convenience views used by the planner and the CLI.
    def nodes_with_role(self, *roles: str) -> list[NodeRecord]:
        return [n for n in self.nodes if n.role in roles]

    def constant_bytes(self) -> int:
        """Bytes of parameters, buffers and inputs (held for the whole step)."""
        seen: set[int] = set()
        for n in self.nodes_with_role(*CONSTANT_ROLES):
            seen.update(n.storages)
        return sum(self.storage_bytes[s] for s in seen)


def unknown_fields(record: type, d: dict[str, Any], what: str) -> str:
    """"" when every key of ``d`` is a field of the dataclass ``record``; else a sentence
    naming the others (a file written by a newer version) for a format error."""
    unknown = sorted(set(d) - {f.name for f in fields(record)})
    return f"the {what} has fields this version does not know ({', '.join(unknown)}): made " \
        "by a newer version?" if unknown else ""


def write_atomic(path: str, data: bytes | str, suffix: str = "") -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, synced and
    renamed over it, so that a crash never leaves a partial file (nor the temporary one)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a file's usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` so that a crash never leaves a partial file."""
    write_atomic(path, json.dumps(obj, indent=1), suffix=".json")


def read_json(path: str, what: str) -> Any:
    """Read a JSON file, turning a missing, truncated or corrupt file into a clear error."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise ProfileFormatError(f"{what} file {path!r} does not exist") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProfileFormatError(f"{what} file {path!r} is truncated or corrupt: {e}") from e
