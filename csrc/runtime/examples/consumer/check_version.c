/* The header's version macros against the library's aghmn_version(): prints the version and
 * exits 0 when the loaded library is the header's version, 1 when it is not. */
#include <stdio.h>
#include <string.h>

#include <aghmn_runtime.h>

#if AGHMN_RUNTIME_VERSION_NUMBER != \
    AGHMN_RUNTIME_VERSION_MAJOR * 10000 + AGHMN_RUNTIME_VERSION_MINOR * 100 + AGHMN_RUNTIME_VERSION_PATCH
#error "AGHMN_RUNTIME_VERSION_NUMBER disagrees with MAJOR, MINOR and PATCH"
#endif

int main(void) {
  const char *header = AGHMN_RUNTIME_VERSION_STRING;
  const char *library = aghmn_version();
  char expected[64];
  snprintf(expected, sizeof expected, "%d.%d.%d ", AGHMN_RUNTIME_VERSION_MAJOR,
           AGHMN_RUNTIME_VERSION_MINOR, AGHMN_RUNTIME_VERSION_PATCH);
  printf("header %s, library %s\n", header, library);
  if (strncmp(expected, header, strlen(header)) != 0 || expected[strlen(header)] != ' ') {
    fprintf(stderr, "AGHMN_RUNTIME_VERSION_STRING %s is not MAJOR.MINOR.PATCH\n", header);
    return 1;
  }
  if (strncmp(library, expected, strlen(expected)) != 0) {
    fprintf(stderr, "aghmn_version() %s does not start with the header's %s\n", library, header);
    return 1;
  }
  return 0;
}
