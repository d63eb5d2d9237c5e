-- What a host offers tenants, told at registration: its NVIDIA driver and the CUDA version that
-- driver supports (placement honours a launch's min_cuda), the address tenants reach it at, and
-- the range of ports it maps to instances. `simulated` marks hosts whose GPUs are simulated.
ALTER TABLE hosts ADD COLUMN driver_version text;
ALTER TABLE hosts ADD COLUMN cuda_version text CHECK (cuda_version ~ '^[0-9]{1,2}\.[0-9]{1,2}$');
ALTER TABLE hosts ADD COLUMN public_address text;
ALTER TABLE hosts ADD COLUMN port_range_from integer;
ALTER TABLE hosts ADD COLUMN port_range_to integer;
ALTER TABLE hosts ADD COLUMN simulated boolean NOT NULL DEFAULT false;
ALTER TABLE hosts ADD CONSTRAINT hosts_port_range CHECK (
  (port_range_from IS NULL) = (port_range_to IS NULL)
  AND (port_range_from IS NULL OR (1024 <= port_range_from AND port_range_from <= port_range_to AND port_range_to <= 65535)));
