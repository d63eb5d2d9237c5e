#pragma once
#include <cstddef>
#include <memory_resource>

namespace spillway {

// Memory for state that lives as long as a host or a descriptor is known: the per-host caches
// (verified keys, heartbeats processed in full, clock skews) and the reactor's per-descriptor records.
//
// Such state is made in bursts (a registration storm), while every connection's buffers and
// request objects are made too. From the common heap the two interleave. When the connections
// close, each small long-lived block pins the page it shares with the freed buffers, and glibc
// can give back little: at 10,000 hosts, 58 of 60 MiB stayed (docs/fleet-scale.md, "Memory").
// Here they fill chunks of their own, densely.
//
// Thread-safe. Chunks are never given back to the system: a block freed by one host is reused by the
// next.
std::pmr::memory_resource& LongLivedMemory();

// Bytes handed out by LongLivedMemory and not yet given back (spillway_long_lived_memory_bytes).
std::size_t LongLivedMemoryInUse();

}  // namespace spillway
