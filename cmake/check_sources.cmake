# Fails if a .cpp file in a source directory is named in no CMakeLists.txt: sources are listed, not
# globbed, and a file left out of its list would otherwise just not be built (or its tests not run).
# Run as a test: cmake -DROOT=<source dir> -P cmake/check_sources.cmake
set(dirs_and_lists
  "src:CMakeLists.txt" "src/sim:src/sim/CMakeLists.txt" "src/bench:src/bench/CMakeLists.txt"
  "tests/common:tests/CMakeLists.txt" "tests/unit:tests/CMakeLists.txt" "tests/sim:tests/CMakeLists.txt"
  "tests/integration:tests/CMakeLists.txt" "tests/bench:tests/CMakeLists.txt" "tests/fuzz:tests/fuzz/CMakeLists.txt")
set(missing "")
foreach(pair IN LISTS dirs_and_lists)
  string(REPLACE ":" ";" parts "${pair}")
  list(GET parts 0 dir)
  list(GET parts 1 listfile)
  file(READ ${ROOT}/${listfile} text)
  file(GLOB files RELATIVE ${ROOT}/${dir} ${ROOT}/${dir}/*.cpp)
  foreach(f IN LISTS files)
    # The fuzz targets are built from their names (fuzz_sse -> fuzz_sse.cpp).
    get_filename_component(stem ${f} NAME_WE)
    if(dir STREQUAL "tests/fuzz")
      string(FIND "${text}" "${stem}" at)
    else()
      string(FIND "${text}" "${f}" at)
    endif()
    if(at EQUAL -1)
      list(APPEND missing "${dir}/${f} (not in ${listfile})")
    endif()
  endforeach()
endforeach()
if(missing)
  list(JOIN missing "\n  " shown)
  message(FATAL_ERROR "source files in no target:\n  ${shown}")
endif()
message(STATUS "every .cpp file is in a target")
