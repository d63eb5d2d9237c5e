#pragma once
#include <cstddef>
#include <memory_resource>
#include <string>
#include <string_view>
#include <utility>

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

// For the caches kept there: maps keyed by std::pmr::string with a transparent compare, looked up by
// any string. Sets `key`'s value, copying the key into the map's memory only when it is new.
template <typename Map, typename Value>
void PutKept(Map& map, std::string_view key, Value&& value) {
  if (const auto it = map.find(key); it != map.end()) it->second = std::forward<Value>(value);
  else map.emplace(std::pmr::string(key, map.get_allocator().resource()), std::forward<Value>(value));
}
template <typename Map>
void EraseKept(Map& map, std::string_view key) {
  if (const auto it = map.find(key); it != map.end()) map.erase(it);
}

}  // namespace spillway
