# Writes OUT: a C++ file defining `const std::vector<EmbeddedFile>& FUNC()` (namespace spillway,
# apiserver/console.hpp) holding the text files FILES ("|"-separated paths), each named by its path
# relative to BASE.
string(REPLACE "|" ";" FILES "${FILES}")
set(body "#include \"apiserver/console.hpp\"\nnamespace spillway {\nconst std::vector<EmbeddedFile>& ${FUNC}() {\n  static const std::vector<EmbeddedFile> kFiles = {\n")
foreach(f IN LISTS FILES)
  file(RELATIVE_PATH name ${BASE} ${f})
  file(READ ${f} text)
  string(FIND "${text}" ")spwfile\"" clash)
  if(NOT clash EQUAL -1)
    message(FATAL_ERROR "${f} contains the embedding delimiter")
  endif()
  string(APPEND body "    {\"${name}\", R\"spwfile(${text})spwfile\"},\n")
endforeach()
string(APPEND body "  };\n  return kFiles;\n}\n}  // namespace spillway\n")
file(WRITE ${OUT} "${body}")
