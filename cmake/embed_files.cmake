# Writes OUT: a C++ file defining `const std::vector<TYPE>& FUNC()` (namespace spillway, declared in
# HEADER, where TYPE is a {name, text} aggregate) holding the text files FILES ("|"-separated paths,
# in that order), each named by its path relative to BASE. Used for the migrations and the console.
string(REPLACE "|" ";" FILES "${FILES}")
set(body "#include \"${HEADER}\"\nnamespace spillway {\nconst std::vector<${TYPE}>& ${FUNC}() {\n  static const std::vector<${TYPE}> kFiles = {\n")
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
