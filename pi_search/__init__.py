"""pi-search: an offline visual search appliance for the Raspberry Pi."""

__version__ = "0.1.0"
