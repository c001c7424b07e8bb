/* The native runtime from C: reads "id<TAB>text" lines on stdin, prints "id<TAB>index<TAB>label"
 * for each (the utterance's predicted emotion, given its conversation so far).
 *
 *   aghmn_classify model.aghmn < dialogue.tsv
 *
 * Lines are at most 65535 bytes (a longer one is skipped with a message).
 * Exit status: 0 done, 1 a line refused (message on stderr), 2 usage or model error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <aghmn_runtime.h>

int main(int argc, char **argv) {
  aghmn_model *model = NULL;
  aghmn_session *session = NULL;
  char line[65536];
  float *probs;
  int labels, status = 0;
  long lineno = 0;
  if (argc != 2) {
    fprintf(stderr, "usage: %s MODEL.aghmn < lines of id<TAB>text\n", argv[0]);
    return 2;
  }
  if (aghmn_model_load(argv[1], &model) != AGHMN_OK) {
    fprintf(stderr, "aghmn_classify: %s\n", aghmn_last_error());
    return 2;
  }
  labels = aghmn_model_num_labels(model);
  probs = malloc(sizeof(float) * (size_t)labels);
  if (probs == NULL || aghmn_session_create(model, &session) != AGHMN_OK) {
    fprintf(stderr, "aghmn_classify: %s\n", probs ? aghmn_last_error() : "out of memory");
    free(probs);
    aghmn_model_free(model);
    return 2;
  }
  while (fgets(line, sizeof line, stdin) != NULL) {
    size_t len = strcspn(line, "\r\n");
    char *tab = memchr(line, '\t', len);
    int64_t index = 0;
    int best = 0, i, c;
    ++lineno;
    /* A full buffer without its newline: the line goes on (unless it ends right here). Its rest
     * is skipped, not pushed as a line of its own. */
    if (strlen(line) == sizeof line - 1 && line[sizeof line - 2] != '\n' &&
        (c = getc(stdin)) != EOF && c != '\n') {
      while ((c = getc(stdin)) != EOF && c != '\n') {
      }
      fprintf(stderr, "aghmn_classify: line %ld: longer than %d bytes, skipped\n", lineno,
              (int)sizeof line - 1);
      status = 1;
      continue;
    }
    if (tab == NULL) {
      fprintf(stderr, "aghmn_classify: line %ld: expected id<TAB>text\n", lineno);
      status = 1;
      continue;
    }
    if (aghmn_push(session, line, (size_t)(tab - line), tab + 1, len - (size_t)(tab + 1 - line),
                   probs, &index) != AGHMN_OK) {
      fprintf(stderr, "aghmn_classify: line %ld: %s\n", lineno, aghmn_last_error());
      status = 1;
      continue;
    }
    for (i = 1; i < labels; ++i)
      if (probs[i] > probs[best]) best = i;
    printf("%.*s\t%lld\t%s\n", (int)(tab - line), line, (long long)index,
           aghmn_model_label(model, best));
    fflush(stdout);
  }
  aghmn_session_free(session);
  aghmn_model_free(model);
  free(probs);
  return status;
}
