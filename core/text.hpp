#pragma once
// Text from outside (paths, query strings, headers, JSON strings) is checked here before any of it
// reaches a rule, a database or a log line.
#include <string>
#include <string_view>

namespace spillway {

// Well-formed UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool IsValidUtf8(std::string_view s);
// Valid UTF-8 holding no C0/C1 control character and no DEL (so no NUL, newline or escape).
bool IsCleanText(std::string_view s);
// IsCleanText, and no Unicode line or paragraph separator (U+2028, U+2029) either: text that is one
// line wherever it is written (an environment file, a shell, a log), whichever line breaks its
// reader knows.
bool IsOneLineText(std::string_view s);
// True when s holds at least one character that is not white space (ASCII or Unicode spaces).
bool HasVisibleCharacter(std::string_view s);
// s with every byte that is not part of well-formed UTF-8 replaced by U+FFFD, so it can be quoted
// in JSON bodies and log lines without writing invalid text.
std::string ScrubUtf8(std::string_view s);
// One CSV field (RFC 4180): quoted when it holds a comma, quote or line break, quotes doubled. With
// `chosen_text` (a text a tenant chose, such as an instance's name) one a spreadsheet would read as
// a formula is prefixed with ' (OWASP's CSV injection advice).
std::string CsvField(std::string_view v, bool chosen_text = false);
// The same, appended to `out` (a row of a large export: no string of its own per field).
void AppendCsvField(std::string& out, std::string_view v, bool chosen_text = false);

}  // namespace spillway
