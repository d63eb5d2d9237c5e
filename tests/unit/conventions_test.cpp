// Conventions the compiler cannot check, checked on the source tree: a store reads a column by
// its name, never by its position in the SELECT list (reordering one would map the wrong column
// without an error), as docs/architecture.md and the seams issue ask.
#include <gtest/gtest.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

namespace {

// `r[2].as<…>`, `row[0].is_null()`, `res[0][0]`: a field taken by its position. (A hand-written
// scan: GCC 12 warns inside std::regex.)
bool Positional(std::string_view line) {
  auto skip_space = [&](size_t i) {
    while (i < line.size() && std::isspace(static_cast<unsigned char>(line[i]))) ++i;
    return i;
  };
  auto index_end = [&](size_t i) -> size_t {  // past "[digits]" at i, or npos
    if (i >= line.size() || line[i] != '[') return std::string_view::npos;
    size_t j = i + 1;
    while (j < line.size() && std::isdigit(static_cast<unsigned char>(line[j]))) ++j;
    if (j == i + 1 || j >= line.size() || line[j] != ']') return std::string_view::npos;
    return j + 1;
  };
  for (size_t i = 0; i < line.size(); ++i) {
    const size_t end = index_end(i);
    if (end == std::string_view::npos) continue;
    size_t k = skip_space(end);
    if (index_end(k) != std::string_view::npos) return true;  // [0][0]
    if (k >= line.size() || line[k] != '.') continue;
    std::string_view rest = line.substr(skip_space(k + 1));
    if (rest.substr(0, 9) == "template ") rest = rest.substr(9);
    for (std::string_view member : {"as<", "is_null(", "c_str("})
      if (rest.substr(0, member.size()) == member) return true;
  }
  return false;
}

std::vector<std::string> PositionalFieldReads(const std::filesystem::path& root) {
  std::vector<std::string> found;
  for (const char* dir : {"accounts", "apiserver", "billing", "core", "metering", "protocol", "provisioning"}) {
    for (const auto& entry : std::filesystem::recursive_directory_iterator(root / dir)) {
      const auto ext = entry.path().extension();
      if (!entry.is_regular_file() || (ext != ".cpp" && ext != ".hpp")) continue;
      std::ifstream in(entry.path());
      std::string line;
      for (int n = 1; std::getline(in, line); ++n)
        if (Positional(line))
          found.push_back(std::filesystem::relative(entry.path(), root).string() + ":" + std::to_string(n) + ": " + line);
    }
  }
  return found;
}

}  // namespace

TEST(Conventions, StoresReadColumnsByName) {
  const auto found = PositionalFieldReads(SPILLWAY_SOURCE_DIR);
  std::string list;
  for (const auto& f : found) list += f + "\n";
  EXPECT_TRUE(found.empty()) << "columns read by position (name them in the SQL and read them by name):\n" << list;
}

// The check itself: it finds what it is meant to find, and leaves names and plain arrays alone.
TEST(Conventions, ThePositionalCheckTellsPositionFromName) {
  for (const char* bad : {"r[2].as<std::int64_t>()", "row[0].is_null()", "res[0][0].as<bool>()",
                          "r[5].template as<std::string>()", "x = rows[1][3];"})
    EXPECT_TRUE(Positional(bad)) << bad;
  for (const char* good : {"r[\"id\"].as<std::string>()", "rows[0][\"state\"]", "argv[1]", "fds[0]",
                           "TextFrom(row[0][\"host_id\"])", "contexts[0]->run()"})
    EXPECT_FALSE(Positional(good)) << good;
}
