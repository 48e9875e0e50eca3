"""Collapse events and sync records: a sensor's sync state (SPEC section 3) on the wire."""

from __future__ import annotations

import cmath
import hashlib
import json
from typing import Annotated, Literal

from pydantic import Field, model_validator

from schemas.messages.wire import ComplexPair, Sha256Hex, UtcTime, _pair, _Wire, format_utc, parse_utc


def collapse_event_id(sensor: str, t_us: int, event: str) -> str:
    """Deterministic id of a transition: SHA-256 hex of ``[sensor, t_us, event]``.

    The three values are hashed as a compact JSON array, so no choice of
    sensor name can make two different triples encode alike.
    """
    text = json.dumps([sensor, int(t_us), event], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


SyncState = Literal["collapsed", "dissipated"]


class CollapseEvent(_Wire):
    """A transition of a sensor's sync state (topic ``becomingone.collapse``).

    ``collapse``: DISSIPATED -> COLLAPSED (reason null); ``dissipate``:
    COLLAPSED -> DISSIPATED because ``coherence`` fell below I_c - hysteresis
    or ``phase`` (delta_phase reached sync.phase_threshold).
    """

    event_id: Sha256Hex
    event: Literal["collapse", "dissipate"]
    reason: Literal["coherence", "phase"] | None = None
    sensor: str = Field(min_length=1)
    cell: str | None = None
    t: UtcTime
    """Emissary grid time of the transition."""
    coherence_sync: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    """|T_sync|^2 (dimensionless)."""
    t_sync: ComplexPair
    """T_sync = (T_master + T_emissary) / 2 as [re, im]; T_emissary on a light node."""
    t_master: ComplexPair | None
    """T_master as [re, im]; null on a light node (no Master)."""
    t_emissary: ComplexPair
    delta_phase: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    """||T_master| - |T_emissary||; 0 on a light node."""

    @model_validator(mode="after")
    def _reason_fits_event(self) -> CollapseEvent:
        if self.event == "collapse" and self.reason is not None:
            raise ValueError("a collapse has no reason (reason must be null)")
        if self.event == "dissipate" and self.reason is None:
            raise ValueError("a dissipate needs reason 'coherence' or 'phase'")
        return self

    @classmethod
    def create(
        cls,
        *,
        event: Literal["collapse", "dissipate"],
        sensor: str,
        t_us: int,
        t_master: complex | None,
        t_emissary: complex,
        reason: Literal["coherence", "phase"] | None = None,
        cell: str | None = None,
    ) -> CollapseEvent:
        """Build the event from the two transducer values; T_sync, |T_sync|^2,
        delta_phase and event_id are derived as SPEC section 3 defines them.
        ``t_master`` None or NaN: a light node (no Master), where T_sync is
        T_emissary and delta_phase 0 (:mod:`operators.light_sync`)."""
        if t_master is None or cmath.isnan(t_master):
            return cls(
                event_id=collapse_event_id(sensor, t_us, event), event=event, reason=reason, sensor=sensor,
                cell=cell, t=format_utc(t_us), coherence_sync=abs(t_emissary) ** 2, t_sync=_pair(t_emissary),
                t_master=None, t_emissary=_pair(t_emissary), delta_phase=0.0,
            )
        t_sync = (complex(t_master) + complex(t_emissary)) / 2
        return cls(
            event_id=collapse_event_id(sensor, t_us, event),
            event=event,
            reason=reason,
            sensor=sensor,
            cell=cell,
            t=format_utc(t_us),
            coherence_sync=abs(t_sync) ** 2,
            t_sync=_pair(t_sync),
            t_master=_pair(t_master),
            t_emissary=_pair(t_emissary),
            delta_phase=abs(abs(t_master) - abs(t_emissary)),
        )

    @property
    def t_us(self) -> int:
        """t in microseconds since the epoch."""
        return parse_utc(self.t)


class SyncRecord(_Wire):
    """A sensor's T_sync every sync.publish_interval (topic ``becomingone.sync``, mesh feed)."""

    node: str = Field(min_length=1)
    """becomingone.name of the publishing node."""
    sensor: str = Field(min_length=1)
    cell: str | None = None
    t: UtcTime
    t_sync: ComplexPair
    coherence_sync: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    t_master: ComplexPair | None
    """null on a light node (no Master)."""
    t_emissary: ComplexPair
    delta_phase: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    state: SyncState
    mature: bool
    """The Master has reached master.min_span (a light node: the Emissary spans its window)."""

    @property
    def t_us(self) -> int:
        """t in microseconds since the epoch."""
        return parse_utc(self.t)

