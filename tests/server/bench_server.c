/* bench_server - the time examples/server adds to each decoded token, at one slot, against the library.

     tests/server/bench_server MODEL_DIR PORT [N_TOKENS] [THREADS] [TOKENIZER]

   The same chat prompt, greedy, N tokens with eos ignored, five times each way, alternating:
   - library: gemma2_generate on a session of this process; time from the first token's callback to
     the last one's, over N-1 tokens;
   - server: a streaming /v1/chat/completions to the server at 127.0.0.1:PORT (started by bench.sh with
     the same thread count); time from the chunk with the first token's text to the one with
     finish_reason, over N-1 tokens, as the client sees them.
   Both spans hold N-1 evaluations and samplings, so their difference is what the server adds:
   parsing nothing (the prompt is already evaluated), the loop's poll, building and sending each chunk.
   The best of the five runs is compared (the machine is shared: the minimum is the least disturbed). */
#define GEMMA2_IMPLEMENTATION
#include "../../gemma2.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <unistd.h>

static double now(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec * 1e-6;
}

#define PROMPT "Write a hello world program"

typedef struct { double first, last; int n; } span;

static int on_token(void *user, int32_t token, const char *text, size_t len)
{
    span *s = (span *)user;
    (void)text; (void)len;
    if (token < 0) return 0;
    if (s->n == 0) s->first = now();
    s->last = now();
    s->n++;
    return 0;
}

static double lib_run(gemma2_model *m, int n_tok)
{
    gemma2_message msg;
    int32_t ids[64];
    int n;
    gemma2_session *s = gemma2_session_new(m, 4096);
    gemma2_generate_params gp = gemma2_generate_params_default();
    span sp = {0, 0, 0};
    msg.role = "user";
    msg.content = PROMPT;
    n = gemma2_chat_tokenize(m, &msg, 1, 1, ids, 64);
    gp.max_new_tokens = n_tok;
    gp.ignore_eos = 1;
    gp.on_token = on_token;
    gp.user = &sp;
    if (!s || n <= 0 || n > 64 || gemma2_generate(s, ids, n, &gp, NULL) != 0 || sp.n != n_tok) {
        fprintf(stderr, "bench_server: library generation failed\n");
        exit(1);
    }
    gemma2_session_free(s); /* its worker threads end: they do not spin beside the server's */
    return (sp.last - sp.first) / (n_tok - 1);
}

static double server_run(int port, int n_tok)
{
    char req[1024], body[512], buf[65536];
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1, blen, k;
    double first = 0, last = 0;
    size_t have = 0;
    char *all = NULL;
    blen = snprintf(body, sizeof body,
                    "{\"messages\":[{\"role\":\"user\",\"content\":\"" PROMPT "\"}],\"temperature\":0,\"max_tokens\":%d,"
                    "\"ignore_eos\":true,\"stream\":true}", n_tok);
    snprintf(req, sizeof req, "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                              "Content-Length: %d\r\n\r\n%s", blen, body);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(0x7f000001);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { fprintf(stderr, "bench_server: cannot connect to port %d\n", port); exit(1); }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) exit(1);
    while ((k = (int)read(fd, buf, sizeof buf)) > 0) {
        double t = now();
        char *p = (char *)realloc(all, have + (size_t)k + 1);
        if (!p) exit(1);
        all = p;
        memcpy(all + have, buf, (size_t)k);
        have += (size_t)k;
        all[have] = 0;
        /* the first chunk with text, and the one that says the reply is done */
        if (!first && strstr(all, "\"delta\":{\"content\"")) first = t;
        if (!last && strstr(all, "\"finish_reason\":\"length\"")) last = t;
    }
    close(fd);
    free(all);
    if (!first || !last) { fprintf(stderr, "bench_server: the server's reply was not the expected stream\n"); exit(1); }
    return (last - first) / (n_tok - 1);
}

int main(int argc, char **argv)
{
    gemma2_options o = gemma2_options_default();
    gemma2_model *m;
    char err[256];
    int port, n_tok = argc > 3 ? atoi(argv[3]) : 200, r;
    double lib = 1e30, srv = 1e30;
    if (argc < 3) { fprintf(stderr, "usage: bench_server MODEL_DIR PORT [N_TOKENS] [THREADS] [TOKENIZER]\n"); return 2; }
    port = atoi(argv[2]);
    o.n_threads = argc > 4 ? atoi(argv[4]) : 0;
    o.tokenizer_path = argc > 5 ? argv[5] : NULL;
    if (n_tok < 2) n_tok = 2;
    m = gemma2_load(argv[1], &o, err, sizeof err);
    if (!m) { fprintf(stderr, "bench_server: %s\n", err); return 1; }
    for (r = 0; r < 5; r++) {
        double a = lib_run(m, n_tok), b = server_run(port, n_tok);
        if (a < lib) lib = a;
        if (b < srv) srv = b;
    }
    printf("server, 1 slot, %d tokens, %d threads, best of 5: library %.3f ms/token, server %.3f ms/token as the "
           "client sees it: %+.1f%% (target < 5%%)\n", n_tok, o.n_threads, lib * 1e3, srv * 1e3, (srv / lib - 1) * 100);
    gemma2_free(m);
    return 0;
}
