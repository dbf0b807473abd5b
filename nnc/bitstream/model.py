"""The parsed form of a bitstream: :class:`Context` (what a unit's syntax depends on from earlier units),
:class:`Unit` and :class:`ParsedBitstream`. The reader (:mod:`.parser`) produces them and the writer
(:mod:`.writer`) re-serialises them; both depend on this module, neither on the other."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from .enums import NNRUnitType
from .syntax import Scope
from .units import LayerParameterSet, ModelParameterSet, StartUnit, TopologyUnit, UnitHeader, _type_name

__all__ = ["Context", "Unit", "ParsedBitstream"]


@dataclass(frozen=True)
class Context:
    """What a unit's syntax depends on from earlier units.

    ``general_profile_idc`` comes from NNR_STR; the two flags from NNR_MPS (0 when absent, and the parent
    flag is 0 unless profile = 1). ``mps``/``lps`` are the parsed parameter-set bodies, if any (an LPS's qp
    fields override the MPS ones for the following NDUs, §1.6)."""

    general_profile_idc: int = 0
    mps_topology_indexed_reference_flag: int = 0
    mps_parent_signalling_enabled_flag: int = 0
    mps: ModelParameterSet | None = None
    lps: LayerParameterSet | None = None

    @property
    def profile(self) -> int:
        return self.general_profile_idc

    @classmethod
    def from_mps(cls, general_profile_idc: int, mps: ModelParameterSet | None) -> "Context":
        return cls(general_profile_idc=general_profile_idc).with_mps(mps)

    def with_mps(self, mps: ModelParameterSet | None) -> "Context":
        if mps is None:
            return dataclasses.replace(self, mps=None, mps_topology_indexed_reference_flag=0,
                                       mps_parent_signalling_enabled_flag=0)
        parent = (mps.mps_parent_signalling_enabled_flag or 0) if self.general_profile_idc == 1 else 0
        return dataclasses.replace(self, mps=mps,
                                   mps_topology_indexed_reference_flag=mps.mps_topology_indexed_reference_flag or 0,
                                   mps_parent_signalling_enabled_flag=parent)

    def scope(self) -> Scope:
        return Scope({
            "general_profile_idc": self.general_profile_idc,
            "mps_topology_indexed_reference_flag": self.mps_topology_indexed_reference_flag,
            "mps_parent_signalling_enabled_flag": self.mps_parent_signalling_enabled_flag,
        })


@dataclass(eq=False)
class Unit:
    """One NNR unit as found in the bitstream.

    ``header`` holds the common unit header (size, type, flags, partial data counter); ``body`` the
    type-specific syntax (a :class:`StartUnit`, :class:`ModelParameterSet`, :class:`LayerParameterSet`,
    :class:`TopologyUnit`, :class:`QuantizationUnit` or :class:`NduHeader`); ``payload`` the NDU payload bytes
    (``memoryview``, NDUs only) starting at ``offset + header_size``. Attributes of the body can also be read
    from the unit directly (``unit.tensor_dimensions``). ``errors`` is non-empty only when parsing with
    ``strict=False``; then ``body`` may be ``None``."""

    index: int
    offset: int
    size: int | None
    header: UnitHeader | None
    body: Any = None
    payload: memoryview | None = None
    header_size: int | None = None
    context: Context | None = None
    data: memoryview | None = None
    errors: list = field(default_factory=list)

    @property
    def nnr_unit_type(self) -> int | None:
        return None if self.header is None else self.header.nnr_unit_type

    @property
    def type_name(self) -> str:
        t = self.nnr_unit_type
        return "unknown" if t is None else _type_name(t)

    @property
    def payload_offset(self) -> int | None:
        return None if self.header_size is None else self.offset + self.header_size

    @property
    def end(self) -> int | None:
        return None if self.size is None else self.offset + self.size

    @property
    def profile(self) -> int | None:
        return None if self.context is None else self.context.general_profile_idc

    @property
    def mps(self) -> ModelParameterSet | None:
        return None if self.context is None else self.context.mps

    @property
    def ok(self) -> bool:
        return not self.errors

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("body", "header"):
            raise AttributeError(name)
        body = self.__dict__.get("body")
        if body is not None and hasattr(body, name):
            return getattr(body, name)
        raise AttributeError(f"{type(self).__name__} ({self.type_name}) has no attribute {name!r}")

    def __repr__(self) -> str:
        extra = f", errors={len(self.errors)}" if self.errors else ""
        return (f"Unit(index={self.index}, {self.type_name}, offset={self.offset}, size={self.size}, "
                f"header_size={self.header_size}{extra})")


class ParsedBitstream(Sequence):
    """The units of a bitstream, in order (a read-only sequence of :class:`Unit`)."""

    def __init__(self, data: memoryview, units: list[Unit], errors: list, context: Context):
        self.data = data
        self.units = units
        self.errors = errors
        self.context = context

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, i):
        return self.units[i]

    def __iter__(self) -> Iterator[Unit]:
        return iter(self.units)

    def __repr__(self) -> str:
        kinds = ", ".join(u.type_name for u in self.units[:8]) + (", ..." if len(self.units) > 8 else "")
        return f"ParsedBitstream({len(self.units)} units: {kinds}; {len(self.errors)} errors)"

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def profile(self) -> int:
        return self.context.general_profile_idc

    @property
    def mps(self) -> ModelParameterSet | None:
        return self.context.mps

    @property
    def start(self) -> StartUnit | None:
        return next((u.body for u in self.units if u.nnr_unit_type == NNRUnitType.NNR_STR), None)

    @property
    def lps(self) -> LayerParameterSet | None:
        """The last NNR_LPS of the stream (its qp fields override the MPS ones, §1.6)."""
        return self.context.lps

    @property
    def topology_unit(self) -> TopologyUnit | None:
        """Body of the first NNR_TPL unit, if any."""
        return next((u.body for u in self.units
                     if u.nnr_unit_type == NNRUnitType.NNR_TPL and u.body is not None), None)

    @property
    def topology(self):
        """The first NNR_TPL unit as an :class:`nnc.topology.Topology` (``None`` without one)."""
        t = self.topology_unit
        return None if t is None else t.to_topology()

    def of_type(self, unit_type: int) -> list[Unit]:
        return [u for u in self.units if u.nnr_unit_type == unit_type]

    def ndus(self) -> list[Unit]:
        return self.of_type(NNRUnitType.NNR_NDU)
