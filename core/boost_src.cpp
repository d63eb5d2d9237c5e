// The one translation unit that compiles Boost's separately-compilable libraries (CONVENTIONS.md: Build).
#include <boost/asio/detail/epoll_reactor.hpp>

#include <new>

#include "core/long_lived.hpp"

// The reactor's per-descriptor records come from LongLivedMemory (core/long_lived.hpp). Asio makes
// one when a socket opens and, when it closes, keeps it on a free list for the next socket: never
// given back. From the common heap, 10,000 of them (168 B each, made at each accept among the
// connection's own buffers) pinned about 6,000 pages after the connections closed.
// This specializes the hook that Asio's object_pool makes them with (asio/detail/object_pool.hpp,
// Boost 1.81). Only this translation unit compiles the reactor, so every use sees it. If a Boost
// upgrade changes the hook, the specialization no longer compiles or is no longer used:
// LongLivedMemoryTest.TheReactorsDescriptorRecordsComeFromIt says which.
namespace boost::asio::detail {

template <>
epoll_reactor::descriptor_state* object_pool_access::create<epoll_reactor::descriptor_state, bool>(bool locking) {
  using State = epoll_reactor::descriptor_state;
  auto& memory = spillway::LongLivedMemory();
  void* p = memory.allocate(sizeof(State), alignof(State));
  try {
    return ::new (p) State(locking);
  } catch (...) {
    memory.deallocate(p, sizeof(State), alignof(State));
    throw;
  }
}

template <>
void object_pool_access::destroy<epoll_reactor::descriptor_state>(epoll_reactor::descriptor_state* o) {
  using State = epoll_reactor::descriptor_state;
  o->~State();
  spillway::LongLivedMemory().deallocate(o, sizeof(State), alignof(State));
}

}  // namespace boost::asio::detail

#include <boost/asio/impl/src.hpp>
#include <boost/asio/ssl/impl/src.hpp>
#include <boost/beast/src.hpp>
#include <boost/json/src.hpp>
#include <boost/url/src.hpp>
