"""The spine every family builds on, importing nothing above it.

* :mod:`.module`: the compressed-layer protocol and the table of layer classes a file may name;
* :mod:`.registry`, :mod:`.config`, :mod:`.selection`, :mod:`.context`: method configs, their
  handlers, which layers a step selects and what a handler may use;
* :mod:`.counting`, :mod:`.workload`: parameters, bytes and MACs per layer;
* :mod:`.errors`, :mod:`.limits`, :mod:`.frozen`, :mod:`.atomic`, :mod:`.integrity`,
  :mod:`.scoped`: errors, input bounds, read-only tensors, atomic writes, file digests and
  scoped switches.
"""
