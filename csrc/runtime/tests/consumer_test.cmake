# ctest runtime_package_consumer: the installed package as an embedder uses it.
#  1. `cmake --install` of this build into a fresh prefix, then the prefix is moved (relocatable);
#  2. the consumer project (csrc/runtime/examples/consumer), copied out of the source tree, is
#     configured against the moved prefix with find_package only, built, and its programs run:
#     check_version, and the example program (shared and static library) on dialogue.tsv;
#  3. asking find_package for the next major version fails (SameMajorVersion);
#  4. the example is compiled with `cc $(pkg-config --cflags --libs aghmn_runtime)` and run.
# cmake -DBUILD_DIR= -DSOURCE_DIR= -DMODEL= -DVERSION= -DC_COMPILER= -DCXX_COMPILER= -DCONFIG=
#       -P consumer_test.cmake
set(work ${BUILD_DIR}/consumer-test)
set(example ${SOURCE_DIR}/csrc/runtime/examples)
file(REMOVE_RECURSE ${work})
file(MAKE_DIRECTORY ${work})

function(run)  # run(<command...>): the command must succeed; its output goes to `run_output`
  execute_process(COMMAND ${ARGN} OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " shown "${ARGN}")
    message(FATAL_ERROR "failed (${rc}): ${shown}\n${out}\n${err}")
  endif()
  set(run_output "${out}" PARENT_SCOPE)
endfunction()

function(classify program)  # the example's checks (run_example.cmake) on one build of it
  run(${CMAKE_COMMAND} -DCLASSIFY=${program} -DMODEL=${MODEL} -DINPUT=${example}/dialogue.tsv
      -P ${example}/run_example.cmake)
  message(STATUS "${program}: classified dialogue.tsv")
endfunction()

if(NOT CONFIG)
  set(CONFIG Release)
endif()
run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${work}/staged --config ${CONFIG})
file(RENAME ${work}/staged ${work}/prefix)
set(prefix ${work}/prefix)
file(GLOB_RECURSE installed RELATIVE ${prefix} ${prefix}/*)
list(SORT installed)
string(REPLACE ";" "\n  " shown "${installed}")
message(STATUS "installed:\n  ${shown}")

file(COPY ${example}/consumer/ DESTINATION ${work}/src)
set(configure ${CMAKE_COMMAND} -S ${work}/src -DCMAKE_PREFIX_PATH=${prefix}
    -DCMAKE_C_COMPILER=${C_COMPILER} -DCMAKE_CXX_COMPILER=${CXX_COMPILER}
    -DCMAKE_BUILD_TYPE=Release -DAGHMN_CLASSIFY_SOURCE=${example}/classify.c)
run(${configure} -B ${work}/build -DAGHMN_REQUIRE_VERSION=${VERSION})
if(NOT run_output MATCHES "aghmn_runtime ${VERSION} found in ${prefix}/")
  message(FATAL_ERROR "the consumer did not find version ${VERSION} in the moved prefix:\n${run_output}")
endif()
run(${CMAKE_COMMAND} --build ${work}/build)
run(${work}/build/check_version)
message(STATUS "check_version: ${run_output}")
classify(${work}/build/classify_shared)
classify(${work}/build/classify_static)

string(REGEX MATCH "^[0-9]+" major "${VERSION}")
math(EXPR next "${major} + 1")
execute_process(COMMAND ${configure} -B ${work}/build-next -DAGHMN_REQUIRE_VERSION=${next}.0
                OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
if(rc EQUAL 0 OR NOT err MATCHES "aghmn_runtime")
  message(FATAL_ERROR "find_package(aghmn_runtime ${next}.0) did not fail on ${VERSION}:\n${out}${err}")
endif()

file(GLOB_RECURSE pc_files ${prefix}/*/aghmn_runtime.pc)
list(LENGTH pc_files n)
if(NOT n EQUAL 1)
  message(FATAL_ERROR "expected one installed aghmn_runtime.pc, found: ${pc_files}")
endif()
get_filename_component(pc_dir ${pc_files} DIRECTORY)
set(ENV{PKG_CONFIG_PATH} ${pc_dir})
run(pkg-config --modversion aghmn_runtime)
string(STRIP "${run_output}" modversion)
if(NOT modversion STREQUAL VERSION)
  message(FATAL_ERROR "pkg-config says version ${modversion}, the build is ${VERSION}")
endif()
run(pkg-config --cflags --libs aghmn_runtime)
separate_arguments(flags UNIX_COMMAND "${run_output}")
run(pkg-config --variable=libdir aghmn_runtime)
string(STRIP "${run_output}" libdir)
run(${C_COMPILER} -std=c99 -O2 -Wall -Wextra -Werror ${example}/classify.c ${flags}
    -Wl,-rpath,${libdir} -o ${work}/classify_pkgconfig)
classify(${work}/classify_pkgconfig)
