"""The ccfactory lab: simulated bare-metal nodes, BMCs and hardware on one machine.

Lab stand-ins live only here; nothing outside ``ccfactory.lab`` may install them.
"""
