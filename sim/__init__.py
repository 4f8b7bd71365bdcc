"""Simulated network parts: an OpenFlow 1.3 switch model (:mod:`sim.switch`), its wire
codec (:mod:`sim.ofcodec`), packets and networks of switches."""
