"""Provisioning-file generation: one file per enabled service of the device's product."""
