"""Running the appliance on a machine: doctor, the demo, systemd notifications, shutdown, memory limits."""
