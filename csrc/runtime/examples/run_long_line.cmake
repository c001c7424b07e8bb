# ctest: a line over the example's 65535-byte limit is refused with a message (exit status 1),
# and its tail is not pushed as a line of its own: the next line is the only one classified.
string(REPEAT "x" 70000 long)
file(WRITE ${WORK}/long_line.tsv "d1\t${long}\td2\tHi there!\nd3\tHow are you?\n")
execute_process(COMMAND ${CLASSIFY} ${MODEL} INPUT_FILE ${WORK}/long_line.tsv
                OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
if(NOT rc EQUAL 1 OR NOT err MATCHES "line 1: longer than 65535 bytes, skipped")
  message(FATAL_ERROR "expected exit 1 and the long-line message, got ${rc}: ${err}")
endif()
string(REGEX MATCHALL "[^\n]+" lines "${out}")
list(LENGTH lines n)
if(NOT n EQUAL 1 OR NOT out MATCHES "^d3\t0\t")
  message(FATAL_ERROR "expected only 'd3<TAB>0<TAB><label>', got:\n${out}")
endif()
