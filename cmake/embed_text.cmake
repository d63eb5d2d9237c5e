# Writes OUT: a C++ file defining `const std::string& FUNC()` (namespace spillway) holding IN's text.
file(READ ${IN} text)
string(FIND "${text}" ")spwtxt\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${IN} contains the embedding delimiter")
endif()
file(WRITE ${OUT} "#include <string>\nnamespace spillway {\nconst std::string& ${FUNC}() {\n  static const std::string kText = R\"spwtxt(${text})spwtxt\";\n  return kText;\n}\n}  // namespace spillway\n")
