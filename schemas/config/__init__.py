"""The BecomingONE configuration: one YAML file, validated by pydantic.

The sections and keys follow the seed project's configuration reference
(``becomingone``, ``kairos``, ``master``, ``emissary``, ``sync``, ``memory``,
``witnessing``, ``security``, ``logging``), hoisted to the top level so every
key has a short dotted path (``kairos.tau_scale``), plus the stream
processor's own sections ``source``, ``sink``, ``kafka`` and ``metrics``.

All durations are seconds in the file and exact integer microseconds at run
time: every section exposes ``*_us`` attributes (:class:`~schemas.config.values.Micros`),
and every rule that compares or divides durations does so on whole
microseconds (SPEC section 2), so a config that passes here pairs samples and
aligns grids exactly.

Entry points:

* :func:`load_config` - file (or ``$BECOMINGONE_CONFIG``, or the embedded
  default) plus ``BECOMINGONE__SECTION__KEY`` environment overrides;
* :func:`parse_config` - an in-memory mapping, no environment;
* :meth:`Config.to_yaml` - the effective config as YAML (round-trips).

Every problem is reported at once in one :class:`ConfigError`, one line per
problem, each naming the full key path and the reason.

The modules, in the order they build on each other:

* :mod:`~schemas.config.values` - value types (durations, ports, topic names), ``Micros``;
* :mod:`~schemas.config.seed_sections`, :mod:`~schemas.config.stream_sections` - the sections;
* :mod:`~schemas.config.rules` - cross-field rules;
* :mod:`~schemas.config.model` - :class:`Config`, the whole config;
* :mod:`~schemas.config.errors`, :mod:`~schemas.config.paths`, :mod:`~schemas.config.translate` -
  :class:`ConfigError`, key paths, pydantic errors as messages;
* :mod:`~schemas.config.validation`, :mod:`~schemas.config.loading` - :func:`parse_config`,
  :func:`load_config`.
"""

from schemas.config.errors import ConfigError
from schemas.config.loading import (
    CONFIG_ENV,
    ENV_PREFIX,
    MAX_CONFIG_NODES,
    config_overrides,
    config_path,
    default_config_text,
    load_config,
)
from schemas.config.model import Config, redact_settings
from schemas.config.security import SecuritySection
from schemas.config.seed_sections import (
    BecomingOneSection,
    EmissarySection,
    KairosSection,
    LoggingSection,
    MasterSection,
    MemorySection,
    MeshPeer,
    MeshSection,
    StorageSection,
    SyncSection,
    WitnessingSection,
    WitnessLayers,
)
from schemas.config.stream_sections import (
    ApiSection,
    DEFAULT_UNAVAILABLE_TIMEOUT,
    FILE_BATCH_ROWS,
    FileSource,
    KafkaSection,
    KafkaSource,
    MetricsSection,
    RelaySection,
    WitnessNodeSection,
    SinkSection,
    SinkTopics,
    Source,
    SyntheticSensor,
    SyntheticSource,
)
from schemas.config.validation import parse_config
from schemas.config.values import FILE_FORMATS, FILE_SUFFIXES

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_UNAVAILABLE_TIMEOUT",
    "ENV_PREFIX",
    "FILE_BATCH_ROWS",
    "FILE_FORMATS",
    "FILE_SUFFIXES",
    "MAX_CONFIG_NODES",
    "BecomingOneSection",
    "Config",
    "ConfigError",
    "EmissarySection",
    "FileSource",
    "KafkaSection",
    "KafkaSource",
    "KairosSection",
    "LoggingSection",
    "MasterSection",
    "MemorySection",
    "MeshPeer",
    "MeshSection",
    "ApiSection",
    "MetricsSection",
    "RelaySection",
    "WitnessNodeSection",
    "SecuritySection",
    "SinkSection",
    "SinkTopics",
    "Source",
    "StorageSection",
    "SyncSection",
    "SyntheticSensor",
    "SyntheticSource",
    "WitnessLayers",
    "WitnessingSection",
    "config_overrides",
    "config_path",
    "default_config_text",
    "load_config",
    "parse_config",
    "redact_settings",
]
