#include "apiserver/http/message.hpp"

#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include "core/crypto.hpp"

namespace spillway::http {

Response ErrorResponse(int status, const std::string& code, const std::string& message,
                       const std::string& request_id) {
  Response r;
  r.status = status;
  boost::json::object err{{"code", code}, {"message", message}, {"request_id", request_id}};
  r.body = boost::json::serialize(boost::json::object{{"error", std::move(err)}});
  return r;
}

std::string RequestIdFrom(const std::string& supplied) {
  bool ok = !supplied.empty() && supplied.size() <= 128;
  for (unsigned char c : supplied)
    ok &= (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == ':');
  return ok ? supplied : "req_" + HexEncode(RandomBytes(12));
}

std::string PercentDecode(const std::string& s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
      out += static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2]));
      i += 2;
    } else if (plus_is_space && s[i] == '+') {
      out += ' ';
    } else {
      out += s[i];
    }
  }
  return out;
}

}  // namespace spillway::http
