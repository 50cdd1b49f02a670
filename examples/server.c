/* server - a local OpenAI-compatible HTTP server for a Gemma 2 model.

     ./examples/server -m gemma-2-2b-it                      http://127.0.0.1:8080
     ./examples/server -m gemma-2-2b-it --parallel 4 -c 8192 four conversations at once
     curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \
          -d '{"messages":[{"role":"user","content":"Hello"}]}'

   Endpoints: POST /v1/chat/completions, POST /v1/completions (streaming with server-sent events or
   one JSON), GET /v1/models, GET /health. Flags follow llama-server's names; --help lists them.

   How it works: one thread runs everything, an event loop over non-blocking sockets (poll). There
   are N slots (--parallel), each a session with its own KV cache. A request waits in a bounded
   queue until a slot is free, takes the free slot whose previous conversation shares the longest
   prefix with its prompt (that part of the KV cache is kept: gemma2_session_rewind), and becomes a
   generator (gemma2_generator_new) for the rest of its prompt. Every loop iteration is one
   gemma2_generate_step over the active slots (slots_advance): each decoding slot gets its next
   token and a slot with prompt left its next pass (at most 128 tokens, so that the others wait
   one pass at most), all in one forward pass, which reads the weights once for all of them.
   Streams are written as tokens arrive (the generator's on_token); a client that goes away is
   noticed on the next poll or write and its slot is free at once. Requests are read with the
   library's JSON reader.

   Build: make examples/server (or: cc -O2 -o server examples/server.c -lm -lpthread; with mingw
   add -lws2_32). */
/* WSAPoll and struct pollfd are Vista and later; the library includes <windows.h>, so this comes first */
#if defined(_WIN32) && (!defined(_WIN32_WINNT) || _WIN32_WINNT < 0x0600)
#undef _WIN32_WINNT
#define _WIN32_WINNT 0x0600
#endif
#define GEMMA2_IMPLEMENTATION
#include "../gemma2.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <stdarg.h>
#include <signal.h>
#include <time.h>
#include <math.h>

#if defined(_WIN32)
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
typedef SOCKET srv_sock;
#define SRV_BAD_SOCK INVALID_SOCKET
#define srv_poll WSAPoll
#define srv_closesock closesocket
#define SRV_WOULDBLOCK(e) ((e) == WSAEWOULDBLOCK)
#define SRV_SEND_FLAGS 0
static int srv_errno(void) { return WSAGetLastError(); }
#else
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <fcntl.h>
#include <unistd.h>
typedef int srv_sock;
#define SRV_BAD_SOCK (-1)
#define srv_poll poll
#define srv_closesock close
#define SRV_WOULDBLOCK(e) ((e) == EAGAIN || (e) == EWOULDBLOCK || (e) == EINTR)
#ifdef MSG_NOSIGNAL
#define SRV_SEND_FLAGS MSG_NOSIGNAL
#else
#define SRV_SEND_FLAGS 0
#endif
static int srv_errno(void) { return errno; }
#endif

#define SRV_MAX_SLOTS 64
#define SRV_MAX_CONNS 256         /* open connections; more are answered 503 and closed */
#define SRV_MAX_HEADER (16 << 10) /* request line and headers */
#define SRV_MAX_OUT (8 << 20)     /* bytes waiting for a client that does not read: beyond, it is dropped */
#define SRV_IDLE_SECONDS 60.0     /* a connection with no request in progress closes after this */
#define SRV_MAX_STOPS 16
#define SRV_MAX_STOP_LEN 256

static double srv_now(void)
{
#if defined(_WIN32)
    LARGE_INTEGER f, c;
    QueryPerformanceFrequency(&f);
    QueryPerformanceCounter(&c);
    return (double)c.QuadPart / (double)f.QuadPart;
#else
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec * 1e-6;
#endif
}

/* ---------------------------------------------------------------- byte buffers */

typedef struct srv_buf {
    char *p;
    size_t n, cap;
} srv_buf;

/* Appending never fails silently: an allocation failure sets oom, and the caller drops the connection. */
static int srv_oom;

static void srv_buf_add(srv_buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *p;
        while (cap < b->n + n + 1) cap *= 2;
        p = (char *)realloc(b->p, cap);
        if (!p) { srv_oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void srv_buf_str(srv_buf *b, const char *s) { srv_buf_add(b, s, strlen(s)); }

static void srv_buf_printf(srv_buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) srv_buf_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void srv_buf_free(srv_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* Drops the first n bytes. */
static void srv_buf_consume(srv_buf *b, size_t n)
{
    if (n >= b->n) { b->n = 0; return; }
    memmove(b->p, b->p + n, b->n - n);
    b->n -= n;
}

/* s as a JSON string literal. The text the detokenizer gives is valid UTF-8 (invalid bytes become
   U+FFFD), so only quotes, backslashes and control characters need escapes. */
static void srv_json_str(srv_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t i, run = 0;
    srv_buf_add(b, "\"", 1);
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[6];
        size_t k = 0;
        if (c == '"' || c == '\\') { e[0] = '\\'; e[1] = (char)c; k = 2; }
        else if (c == '\n') { e[0] = '\\'; e[1] = 'n'; k = 2; }
        else if (c == '\r') { e[0] = '\\'; e[1] = 'r'; k = 2; }
        else if (c == '\t') { e[0] = '\\'; e[1] = 't'; k = 2; }
        else if (c < 0x20 || c == 0x7f) {
            e[0] = '\\'; e[1] = 'u'; e[2] = '0'; e[3] = '0'; e[4] = hex[c >> 4]; e[5] = hex[c & 15]; k = 6;
        }
        if (k) {
            srv_buf_add(b, s + i - run, run);
            srv_buf_add(b, e, k);
            run = 0;
        } else run++;
    }
    srv_buf_add(b, s + n - run, run);
    srv_buf_add(b, "\"", 1);
}

/* ---------------------------------------------------------------- server state */

enum { SRV_FINISH_NONE, SRV_FINISH_STOP, SRV_FINISH_LENGTH };

/* One accepted request, from its parse to its last byte. */
typedef struct srv_job {
    int conn;                     /* the connection it answers */
    int chat;                     /* /v1/chat/completions (else /v1/completions) */
    int stream, include_usage;
    int32_t *prompt;
    int n_prompt;
    int max_tokens;               /* already limited to what fits in the context */
    int ignore_eos;
    gemma2_sampler_params sp;
    gemma2_logit_bias *bias;
    char *stops[SRV_MAX_STOPS];
    int n_stops;
    int started;                  /* a stream's HTTP header is written */
    char id[48];
    long created;
} srv_job;

typedef struct srv_slot {
    struct srv *sv;
    gemma2_session *s;
    gemma2_generator *g;          /* the request's generation */
    srv_job *job;                 /* NULL: free */
    int n_gen, n_cached;
    srv_buf text;                 /* non-streaming: the whole reply */
    double t_start, t_prompt;
} srv_slot;

typedef struct srv_conn {
    srv_sock fd;
    int used;
    srv_buf in, out;
    int keep_alive, close_after_write;
    int busy;                     /* a request of this connection is queued or in a slot */
    int sent_continue;            /* "100 Continue" written for the request being read */
    double last_active;
} srv_conn;

typedef struct srv_opts {
    const char *model, *tokenizer, *host, *alias;
    int port, parallel, n_ctx, n_threads, queue, max_body;
} srv_opts;

typedef struct srv {
    srv_opts o;
    gemma2_model *m;
    gemma2_batch *batch;          /* one forward pass for all slots */
    const gemma2_config *cfg;
    char model_name[256];
    srv_sock lfd;
    srv_conn conns[SRV_MAX_CONNS];
    srv_slot slots[SRV_MAX_SLOTS];
    int n_slots, n_ctx;
    srv_job **queue;              /* FIFO of jobs waiting for a slot */
    int n_queue;
    unsigned long n_requests;
    uint64_t seed_counter;
} srv;

static volatile sig_atomic_t srv_stop_flag;
static void srv_on_signal(int sig) { (void)sig; srv_stop_flag = 1; }

/* ---------------------------------------------------------------- connections and writing */

static void srv_set_nonblocking(srv_sock fd)
{
#if defined(_WIN32)
    u_long one = 1;
    ioctlsocket(fd, FIONBIO, &one);
#else
    int fl = fcntl(fd, F_GETFL, 0);
    if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
#endif
}

static void srv_job_free(srv_job *j)
{
    int i;
    if (!j) return;
    free(j->prompt);
    free(j->bias);
    for (i = 0; i < j->n_stops; i++) free(j->stops[i]);
    free(j);
}

/* Ends a slot's request: its session keeps its tokens for the next request's prefix. */
static void srv_slot_release(srv_slot *sl)
{
    gemma2_generator_free(sl->g);
    sl->g = NULL;
    srv_job_free(sl->job);
    sl->job = NULL;
    sl->text.n = 0;
}

/* Closes a connection and frees whatever it had: its slot at once, or its place in the queue. */
static void srv_conn_drop(srv *sv, int ci)
{
    srv_conn *c = &sv->conns[ci];
    int i;
    if (!c->used) return;
    for (i = 0; i < sv->n_slots; i++)
        if (sv->slots[i].job && sv->slots[i].job->conn == ci) srv_slot_release(&sv->slots[i]);
    for (i = 0; i < sv->n_queue; i++)
        if (sv->queue[i]->conn == ci) {
            srv_job_free(sv->queue[i]);
            memmove(sv->queue + i, sv->queue + i + 1, (size_t)(sv->n_queue - i - 1) * sizeof *sv->queue);
            sv->n_queue--;
            i--;
        }
    srv_closesock(c->fd);
    srv_buf_free(&c->in);
    srv_buf_free(&c->out);
    memset(c, 0, sizeof *c);
    c->fd = SRV_BAD_SOCK;
}

/* Writes what the socket takes now. Returns 0, or -1 when the client is gone (the caller drops it). */
static int srv_conn_flush(srv_conn *c)
{
    while (c->out.n > 0) {
        int chunk = c->out.n > (1u << 30) ? (1 << 30) : (int)c->out.n;
#if defined(_WIN32)
        int k = send(c->fd, c->out.p, chunk, SRV_SEND_FLAGS);
#else
        ssize_t k = send(c->fd, c->out.p, (size_t)chunk, SRV_SEND_FLAGS);
#endif
        if (k < 0) {
            if (SRV_WOULDBLOCK(srv_errno())) break;
            return -1;
        }
        srv_buf_consume(&c->out, (size_t)k);
    }
    if (c->out.n > SRV_MAX_OUT || srv_oom) return -1;
    return 0;
}

static const char *srv_status_text(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return "Error";
    }
}

static void srv_respond(srv_conn *c, int status, const char *ctype, const char *body, size_t len, const char *extra)
{
    srv_buf_printf(&c->out, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %lu\r\nConnection: %s\r\n%s\r\n",
                   status, srv_status_text(status), ctype, (unsigned long)len, c->keep_alive ? "keep-alive" : "close",
                   extra ? extra : "");
    srv_buf_add(&c->out, body, len);
    if (!c->keep_alive) c->close_after_write = 1;
}

/* {"error":{"message":...,"type":...,"code":status}} */
static void srv_error(srv_conn *c, int status, const char *type, const char *fmt, ...)
{
    char msg[512];
    srv_buf b = {0};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    srv_buf_str(&b, "{\"error\":{\"message\":");
    srv_json_str(&b, msg, strlen(msg));
    srv_buf_printf(&b, ",\"type\":\"%s\",\"param\":null,\"code\":%d}}", type, status);
    srv_respond(c, status, "application/json", b.p ? b.p : "", b.n, NULL);
    srv_buf_free(&b);
}

/* ---------------------------------------------------------------- generation in slots */

/* The text a finished or advancing slot delivers: a streamed chunk, or kept for the one reply. */
static void srv_emit(srv *sv, srv_slot *sl, const char *text, size_t len, int finish)
{
    srv_job *j = sl->job;
    srv_conn *c = &sv->conns[j->conn];
    if (!j->stream) {
        srv_buf_add(&sl->text, text, len);
        return;
    }
    if (len > 0 || finish) {
        srv_buf_printf(&c->out, "data: {\"id\":\"%s\",\"object\":\"%s\",\"created\":%ld,\"model\":", j->id,
                       j->chat ? "chat.completion.chunk" : "text_completion", j->created);
        srv_json_str(&c->out, sv->model_name, strlen(sv->model_name));
        srv_buf_str(&c->out, ",\"choices\":[{\"index\":0,");
        if (j->chat) {
            srv_buf_str(&c->out, "\"delta\":{");
            if (len > 0) { srv_buf_str(&c->out, "\"content\":"); srv_json_str(&c->out, text, len); }
            srv_buf_str(&c->out, "}");
        } else {
            srv_buf_str(&c->out, "\"text\":");
            srv_json_str(&c->out, text, len);
            srv_buf_str(&c->out, ",\"logprobs\":null");
        }
        srv_buf_printf(&c->out, ",\"finish_reason\":%s}]}\n\n",
                       finish == SRV_FINISH_STOP ? "\"stop\"" : finish == SRV_FINISH_LENGTH ? "\"length\"" : "null");
    }
}

static void srv_usage_json(srv_buf *b, const srv_slot *sl)
{
    const srv_job *j = sl->job;
    double now = srv_now();
    srv_buf_printf(b, "\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d,"
                      "\"prompt_tokens_details\":{\"cached_tokens\":%d}},",
                   j->n_prompt, sl->n_gen, j->n_prompt + sl->n_gen, sl->n_cached);
    /* llama-server's timings: prompt (the part evaluated) and decoding */
    srv_buf_printf(b, "\"timings\":{\"prompt_n\":%d,\"prompt_ms\":%.3f,\"predicted_n\":%d,\"predicted_ms\":%.3f}",
                   j->n_prompt - sl->n_cached, (sl->t_prompt - sl->t_start) * 1e3, sl->n_gen, (now - sl->t_prompt) * 1e3);
}

/* Ends the slot's request with a finish reason, writes the last chunk or the whole reply, frees the slot. */
static void srv_finish(srv *sv, srv_slot *sl, int finish)
{
    srv_job *j = sl->job;
    srv_conn *c = &sv->conns[j->conn];
    if (j->stream) {
        srv_emit(sv, sl, "", 0, finish);
        if (j->include_usage) {
            srv_buf_printf(&c->out, "data: {\"id\":\"%s\",\"object\":\"%s\",\"created\":%ld,\"model\":", j->id,
                           j->chat ? "chat.completion.chunk" : "text_completion", j->created);
            srv_json_str(&c->out, sv->model_name, strlen(sv->model_name));
            srv_buf_str(&c->out, ",\"choices\":[],");
            srv_usage_json(&c->out, sl);
            srv_buf_str(&c->out, "}\n\n");
        }
        srv_buf_str(&c->out, "data: [DONE]\n\n");
        c->close_after_write = 1;
    } else {
        srv_buf b = {0};
        srv_buf_printf(&b, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%ld,\"model\":", j->id,
                       j->chat ? "chat.completion" : "text_completion", j->created);
        srv_json_str(&b, sv->model_name, strlen(sv->model_name));
        srv_buf_str(&b, ",\"choices\":[{\"index\":0,");
        if (j->chat) {
            srv_buf_str(&b, "\"message\":{\"role\":\"assistant\",\"content\":");
            srv_json_str(&b, sl->text.p ? sl->text.p : "", sl->text.n);
            srv_buf_str(&b, "},");
        } else {
            srv_buf_str(&b, "\"text\":");
            srv_json_str(&b, sl->text.p ? sl->text.p : "", sl->text.n);
            srv_buf_str(&b, ",");
        }
        srv_buf_printf(&b, "\"logprobs\":null,\"finish_reason\":\"%s\"}],", finish == SRV_FINISH_STOP ? "stop" : "length");
        srv_usage_json(&b, sl);
        srv_buf_str(&b, "}");
        srv_respond(c, 200, "application/json", b.p ? b.p : "", b.n, NULL);
        srv_buf_free(&b);
    }
    c->busy = 0;
    srv_slot_release(sl);
}

/* A request that fails after it was accepted (the model computed NaN, out of memory). */
static void srv_fail(srv *sv, srv_slot *sl, int rc)
{
    srv_conn *c = &sv->conns[sl->job->conn];
    if (sl->job->stream && sl->job->started) {
        srv_buf_printf(&c->out, "data: {\"error\":{\"message\":\"generation failed: %s\",\"type\":\"server_error\",\"code\":500}}\n\n",
                       gemma2_error_string(rc));
        c->close_after_write = 1;
    } else srv_error(c, 500, "server_error", "generation failed: %s", gemma2_error_string(rc));
    c->busy = 0;
    srv_slot_release(sl);
    gemma2_session_rewind(sl->s, 0);
}

/* The generator's callbacks, user = the slot: text as it is known to be final (stop strings are
   held back and cut by the library), and the end of the prompt. */
static int srv_on_token(void *user, int32_t tok, const char *text, size_t len)
{
    srv_slot *sl = (srv_slot *)user;
    if (tok >= 0) sl->n_gen++;
    srv_emit(sl->sv, sl, text, len, 0);
    return 0;
}

static int srv_on_prompt(void *user, int done, int total)
{
    srv_slot *sl = (srv_slot *)user;
    if (done == total) sl->t_prompt = srv_now();
    return 0;
}

/* One step of every active slot: gemma2_generate_step, then the slots that finished. */
static void srv_slots_advance(srv *sv)
{
    gemma2_generator *g[SRV_MAX_SLOTS];
    int idx[SRV_MAX_SLOTS], n = 0, i, rc;
    for (i = 0; i < sv->n_slots; i++)
        if (sv->slots[i].job) {
            g[n] = sv->slots[i].g;
            idx[n++] = i;
        }
    if (n == 0) return;
    rc = gemma2_generate_step(sv->batch, g, n);
    for (i = 0; i < n; i++) {
        srv_slot *sl = &sv->slots[idx[i]];
        gemma2_generate_result res;
        int d = rc < 0 ? rc : gemma2_generator_done(sl->g, &res);
        if (d < 0) srv_fail(sv, sl, d); /* the whole step failed (out of memory), or this slot's generation */
        else if (d == 1)
            srv_finish(sv, sl, res.stop_reason == GEMMA2_STOP_EOS || res.stop_reason == GEMMA2_STOP_STRING ? SRV_FINISH_STOP : SRV_FINISH_LENGTH);
    }
}

/* Starts a queued job in a free slot: the one whose cached tokens share the longest prefix with
   the prompt; only the rest of the prompt is evaluated, by the slot's generator. */
static void srv_slot_start(srv *sv, srv_job *j)
{
    srv_slot *sl = NULL;
    gemma2_generate_params p = gemma2_generate_params_default();
    int i, best = -1, rc;
    for (i = 0; i < sv->n_slots; i++) {
        srv_slot *t = &sv->slots[i];
        const int32_t *toks;
        int pos, k = 0;
        if (t->job) continue;
        toks = gemma2_session_tokens(t->s);
        pos = gemma2_session_pos(t->s);
        while (k < pos && k < j->n_prompt && toks[k] == j->prompt[k]) k++;
        if (k > best) { best = k; sl = t; }
    }
    GEMMA2_ASSERT(sl);
    sl->job = j;
    sl->n_gen = 0;
    sl->text.n = 0;
    sl->t_start = sl->t_prompt = srv_now();
    /* at least the prompt's last token is evaluated, so that its logits are fresh */
    if (best > j->n_prompt - 1) best = j->n_prompt - 1;
    sl->n_cached = best;
    p.sampler = j->sp;
    p.max_new_tokens = j->max_tokens;
    p.stop_strings = (const char *const *)j->stops;
    p.n_stop_strings = j->n_stops;
    p.ignore_eos = j->ignore_eos;
    p.on_token = srv_on_token;
    p.on_prompt = srv_on_prompt;
    p.user = sl;
    rc = gemma2_session_rewind(sl->s, best);
    if (rc == 0) sl->g = gemma2_generator_new(sl->s, j->prompt + best, j->n_prompt - best, &p, &rc);
    if (rc != 0) { srv_fail(sv, sl, rc); return; }
    if (j->stream) {
        srv_conn *c = &sv->conns[j->conn];
        j->started = 1;
        srv_buf_str(&c->out, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                             "Connection: close\r\n\r\n");
        if (j->chat) {
            srv_buf_printf(&c->out, "data: {\"id\":\"%s\",\"object\":\"chat.completion.chunk\",\"created\":%ld,\"model\":",
                           j->id, j->created);
            srv_json_str(&c->out, sv->model_name, strlen(sv->model_name));
            srv_buf_str(&c->out, ",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                                 "\"finish_reason\":null}]}\n\n");
        }
    }
}

/* ---------------------------------------------------------------- requests */

/* A string field into a fresh C string; NULL if not a string. */
static char *srv_jstr(const gemma2_json *j, int node, size_t *len)
{
    int64_t n = gemma2_json_string(j, node, NULL, 0);
    char *s;
    if (n < 0) return NULL;
    s = (char *)malloc((size_t)n + 1);
    if (!s) return NULL;
    gemma2_json_string(j, node, s, (size_t)n + 1);
    if (len) *len = (size_t)n;
    return s;
}

/* A chat message's content: a string, or OpenAI's array of parts where the text parts are joined. */
static char *srv_content(const gemma2_json *j, int node)
{
    int part;
    srv_buf b = {0};
    if (gemma2_json_type(j, node) == GEMMA2_JSON_STRING) return srv_jstr(j, node, NULL);
    if (gemma2_json_type(j, node) != GEMMA2_JSON_ARRAY) return NULL;
    srv_buf_add(&b, "", 0);
    for (part = gemma2_json_child(j, node); part >= 0; part = gemma2_json_next(j, part)) {
        int t = gemma2_json_get(j, part, "type"), tx = gemma2_json_get(j, part, "text");
        char *type = srv_jstr(j, t, NULL), *text;
        size_t n;
        int ok = type && !strcmp(type, "text");
        free(type);
        if (!ok || !(text = srv_jstr(j, tx, &n))) { srv_buf_free(&b); return NULL; }
        srv_buf_add(&b, text, n);
        free(text);
    }
    return b.p;
}

/* Reads the fields both endpoints share. Returns 0, or writes a 400 and returns -1. */
static int srv_parse_params(srv *sv, srv_conn *c, const gemma2_json *js, srv_job *j)
{
    int node, V = gemma2_vocab_size(sv->m);
    double d;
#define SRV_NUM(key, lo, hi, dst)                                                                              \
    node = gemma2_json_get(js, 0, key);                                                                       \
    if (node >= 0 && gemma2_json_type(js, node) != GEMMA2_JSON_NULL) {                                        \
        if (!gemma2_json_number(js, node, &d) || !(d >= (lo) && d <= (hi))) {                                 \
            srv_error(c, 400, "invalid_request_error", "'%s' must be a number in [%g, %g]", key, (double)(lo), (double)(hi)); \
            return -1;                                                                                        \
        }                                                                                                     \
        dst = d;                                                                                              \
    }
    double temperature = 1.0, top_p = 1.0, fp = 0, pp = 0, max_tokens = -1, seed = -1, n = 1;
    SRV_NUM("temperature", 0.0, 100.0, temperature)
    SRV_NUM("top_p", 0.0, 1.0, top_p)
    SRV_NUM("frequency_penalty", -2.0, 2.0, fp)
    SRV_NUM("presence_penalty", -2.0, 2.0, pp)
    SRV_NUM("max_tokens", 1.0, 2147483647.0, max_tokens)
    SRV_NUM("max_completion_tokens", 1.0, 2147483647.0, max_tokens)
    SRV_NUM("seed", -9007199254740992.0, 9007199254740992.0, seed)
    SRV_NUM("n", 1.0, 1.0, n)
#undef SRV_NUM
    (void)n;
    if (max_tokens >= 0 && max_tokens != floor(max_tokens)) {
        srv_error(c, 400, "invalid_request_error", "'max_tokens' must be an integer");
        return -1;
    }
    j->sp = gemma2_sampler_params_default();
    j->sp.temperature = (float)temperature;
    j->sp.top_p = (float)top_p;
    j->sp.frequency_penalty = (float)fp;
    j->sp.presence_penalty = (float)pp;
    if (gemma2_json_type(js, gemma2_json_get(js, 0, "seed")) == GEMMA2_JSON_NUMBER) j->sp.seed = (uint64_t)(int64_t)seed;
    else j->sp.seed = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull + ++sv->seed_counter; /* OpenAI: random */
    j->max_tokens = max_tokens > 0 ? (max_tokens > 2147483647.0 ? 2147483647 : (int)max_tokens) : 2147483647;

#define SRV_BOOL(key, dst)                                                                                    \
    node = gemma2_json_get(js, 0, key);                                                                       \
    if (node >= 0 && gemma2_json_type(js, node) != GEMMA2_JSON_NULL) {                                        \
        if (gemma2_json_type(js, node) != GEMMA2_JSON_TRUE && gemma2_json_type(js, node) != GEMMA2_JSON_FALSE) { \
            srv_error(c, 400, "invalid_request_error", "'%s' must be true or false", key);                    \
            return -1;                                                                                        \
        }                                                                                                     \
        dst = gemma2_json_type(js, node) == GEMMA2_JSON_TRUE;                                                 \
    }
    SRV_BOOL("stream", j->stream)
    SRV_BOOL("ignore_eos", j->ignore_eos)
#undef SRV_BOOL
    node = gemma2_json_get(js, 0, "stream_options");
    if (node >= 0 && gemma2_json_type(js, node) == GEMMA2_JSON_OBJECT)
        j->include_usage = gemma2_json_type(js, gemma2_json_get(js, node, "include_usage")) == GEMMA2_JSON_TRUE;

    /* stop: a string or an array of strings */
    node = gemma2_json_get(js, 0, "stop");
    if (node >= 0 && gemma2_json_type(js, node) != GEMMA2_JSON_NULL) {
        int one = gemma2_json_type(js, node) == GEMMA2_JSON_STRING, e;
        if (!one && gemma2_json_type(js, node) != GEMMA2_JSON_ARRAY) {
            srv_error(c, 400, "invalid_request_error", "'stop' must be a string or an array of strings");
            return -1;
        }
        for (e = one ? node : gemma2_json_child(js, node); e >= 0; e = one ? -1 : gemma2_json_next(js, e)) {
            size_t len = 0;
            char *s = srv_jstr(js, e, &len);
            if (!s || len == 0 || len > SRV_MAX_STOP_LEN || strlen(s) != len || j->n_stops == SRV_MAX_STOPS) {
                free(s);
                srv_error(c, 400, "invalid_request_error",
                          "'stop': at most %d non-empty strings of at most %d bytes", SRV_MAX_STOPS, SRV_MAX_STOP_LEN);
                return -1;
            }
            j->stops[j->n_stops++] = s;
        }
    }

    /* logit_bias: {"token id": bias}; -100 bans the token (OpenAI: "should result in a ban") */
    node = gemma2_json_get(js, 0, "logit_bias");
    if (node >= 0 && gemma2_json_type(js, node) != GEMMA2_JSON_NULL) {
        int key, nb = 0;
        if (gemma2_json_type(js, node) != GEMMA2_JSON_OBJECT) {
            srv_error(c, 400, "invalid_request_error", "'logit_bias' must be an object of token ids to numbers");
            return -1;
        }
        j->bias = (gemma2_logit_bias *)calloc((size_t)gemma2_json_count(js, node) + 1, sizeof *j->bias);
        if (!j->bias) { srv_error(c, 500, "server_error", "out of memory"); return -1; }
        for (key = gemma2_json_child(js, node); key >= 0; key = gemma2_json_next(js, gemma2_json_next(js, key))) {
            char kb[16], *end;
            long id;
            int64_t kl = gemma2_json_string(js, key, kb, sizeof kb);
            if (kl <= 0 || kl >= (int64_t)sizeof kb || kb[0] < '0' || kb[0] > '9' ||
                (id = strtol(kb, &end, 10), *end) || id >= V ||
                !gemma2_json_number(js, gemma2_json_next(js, key), &d) || !(d >= -100 && d <= 100)) {
                srv_error(c, 400, "invalid_request_error",
                          "'logit_bias': keys must be token ids below %d, values numbers in [-100, 100]", V);
                return -1;
            }
            j->bias[nb].token = (int32_t)id;
            j->bias[nb].bias = d <= -100 ? -INFINITY : (float)d;
            nb++;
        }
        j->sp.logit_bias = j->bias;
        j->sp.n_logit_bias = nb;
    }
    return 0;
}

/* Tokenizes the prompt of a chat or completion request into j. Returns 0 or writes a 400. */
static int srv_parse_prompt(srv *sv, srv_conn *c, const gemma2_json *js, srv_job *j)
{
    int n, i;
    if (j->chat) {
        int msgs = gemma2_json_get(js, 0, "messages"), e, nm;
        gemma2_message *mv;
        char **texts;
        if (gemma2_json_type(js, msgs) != GEMMA2_JSON_ARRAY || gemma2_json_count(js, msgs) == 0) {
            srv_error(c, 400, "invalid_request_error", "'messages' must be a non-empty array");
            return -1;
        }
        nm = gemma2_json_count(js, msgs);
        mv = (gemma2_message *)calloc((size_t)nm, sizeof *mv);
        texts = (char **)calloc((size_t)nm * 2, sizeof *texts);
        if (!mv || !texts) { free(mv); free(texts); srv_error(c, 500, "server_error", "out of memory"); return -1; }
        for (i = 0, e = gemma2_json_child(js, msgs); e >= 0; e = gemma2_json_next(js, e), i++) {
            texts[2 * i] = srv_jstr(js, gemma2_json_get(js, e, "role"), NULL);
            texts[2 * i + 1] = srv_content(js, gemma2_json_get(js, e, "content"));
            mv[i].role = texts[2 * i];
            mv[i].content = texts[2 * i + 1];
            if (!mv[i].role || !mv[i].content) break;
        }
        n = i < nm ? -1000 : gemma2_chat_tokenize(sv->m, mv, nm, 1, NULL, 0);
        if (n > 0 && (j->prompt = (int32_t *)malloc((size_t)n * sizeof(int32_t))) != NULL)
            gemma2_chat_tokenize(sv->m, mv, nm, 1, j->prompt, n);
        for (i = 0; i < 2 * nm; i++) free(texts[i]);
        free(texts);
        free(mv);
        if (n == -1000) {
            srv_error(c, 400, "invalid_request_error", "each message needs a string 'role' and a 'content' (a string or text parts)");
            return -1;
        }
        if (n == GEMMA2_ERROR_CHAT_FORMAT) {
            srv_error(c, 400, "invalid_request_error", "messages: roles must be user/assistant alternating, starting with "
                                                       "user, after at most one leading system message");
            return -1;
        }
    } else {
        int p = gemma2_json_get(js, 0, "prompt");
        size_t len = 0;
        char *text;
        if (gemma2_json_type(js, p) == GEMMA2_JSON_ARRAY && gemma2_json_count(js, p) == 1) p = gemma2_json_child(js, p);
        if (!(text = srv_jstr(js, p, &len))) {
            srv_error(c, 400, "invalid_request_error", "'prompt' must be a string");
            return -1;
        }
        n = gemma2_tokenize(sv->m, text, len, NULL, 0, GEMMA2_TOKENIZE_ADD_BOS | GEMMA2_TOKENIZE_SPECIAL);
        if (n > 0 && (j->prompt = (int32_t *)malloc((size_t)n * sizeof(int32_t))) != NULL)
            gemma2_tokenize(sv->m, text, len, j->prompt, n, GEMMA2_TOKENIZE_ADD_BOS | GEMMA2_TOKENIZE_SPECIAL);
        free(text);
    }
    if (n <= 0 || !j->prompt) {
        srv_error(c, n == GEMMA2_ERROR_OUT_OF_MEMORY || !j->prompt ? 500 : 400, "invalid_request_error",
                  "the prompt could not be tokenized: %s", gemma2_error_string(n < 0 ? n : GEMMA2_ERROR_OUT_OF_MEMORY));
        return -1;
    }
    j->n_prompt = n;
    if (n >= sv->n_ctx) {
        srv_error(c, 400, "invalid_request_error",
                  "the prompt has %d tokens, more than the context holds: %d tokens (-c), with room for one generated token",
                  n, sv->n_ctx);
        return -1;
    }
    return 0;
}

/* A POST to one of the completion endpoints: parsed, checked and queued, or answered with an error. */
static void srv_completion(srv *sv, int ci, const char *body, size_t len, int chat)
{
    srv_conn *c = &sv->conns[ci];
    char err[256];
    gemma2_json *js = gemma2_json_parse(body, len, err, sizeof err);
    srv_job *j;
    int i, free_slots = 0;
    if (!js) { srv_error(c, 400, "invalid_request_error", "malformed JSON: %s", err); return; }
    if (gemma2_json_type(js, 0) != GEMMA2_JSON_OBJECT) {
        gemma2_json_free(js);
        srv_error(c, 400, "invalid_request_error", "the body must be a JSON object");
        return;
    }
    j = (srv_job *)calloc(1, sizeof *j);
    if (!j) { gemma2_json_free(js); srv_error(c, 500, "server_error", "out of memory"); return; }
    j->conn = ci;
    j->chat = chat;
    if (srv_parse_params(sv, c, js, j) != 0 || srv_parse_prompt(sv, c, js, j) != 0) {
        gemma2_json_free(js);
        srv_job_free(j);
        return;
    }
    gemma2_json_free(js);
    if (j->max_tokens > sv->n_ctx - j->n_prompt) j->max_tokens = sv->n_ctx - j->n_prompt;
    for (i = 0; i < sv->n_slots; i++) free_slots += sv->slots[i].job == NULL;
    if (sv->n_queue >= free_slots + sv->o.queue) {
        srv_job_free(j);
        srv_error(c, 503, "server_busy", "all %d slots are busy and %d requests wait (--queue): try again later",
                  sv->n_slots, sv->n_queue);
        return;
    }
    sprintf(j->id, "%s-%lu", chat ? "chatcmpl" : "cmpl", ++sv->n_requests);
    j->created = (long)time(NULL);
    sv->queue[sv->n_queue++] = j;
    c->busy = 1;
}

/* The next "\r\n" at or after p; the headers end in "\r\n\r\n", so one is always found before it
   (strstr would stop at a NUL byte sent in a header). */
static char *srv_crlf(char *p)
{
    while (p[0] != '\r' || p[1] != '\n') p++;
    return p;
}

static int srv_ieq(const char *a, size_t an, const char *b)
{
    size_t i, bn = strlen(b);
    if (an != bn) return 0;
    for (i = 0; i < an; i++) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z') x = (char)(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z') y = (char)(y - 'A' + 'a');
        if (x != y) return 0;
    }
    return 1;
}

/* Handles the complete requests waiting in a connection's input, one at a time (a queued request
   holds the rest until it is answered). Returns -1 to drop the connection. */
static int srv_conn_requests(srv *sv, int ci)
{
    srv_conn *c = &sv->conns[ci];
    while (!c->busy && !c->close_after_write && c->in.n > 0) {
        char *p = c->in.p, *hend = NULL, *line, *sp1, *sp2, *eol;
        size_t i, hlen, body_len = 0;
        int minor, have_len = 0, chunked = 0, expect = 0, is_get, is_post;
        const char *path_end;
        for (i = 0; i + 3 < c->in.n; i++)
            if (p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' && p[i + 3] == '\n') { hend = p + i; break; }
        if (!hend) {
            if (c->in.n > SRV_MAX_HEADER) {
                c->keep_alive = 0;
                srv_error(c, 431, "invalid_request_error", "request headers longer than %d bytes", SRV_MAX_HEADER);
            }
            return 0;
        }
        hlen = (size_t)(hend - p) + 4;
        if (hlen > SRV_MAX_HEADER) {
            c->keep_alive = 0;
            srv_error(c, 431, "invalid_request_error", "request headers longer than %d bytes", SRV_MAX_HEADER);
            return 0;
        }
        /* request line: METHOD SP TARGET SP HTTP/1.x */
        eol = srv_crlf(p);
        sp1 = memchr(p, ' ', (size_t)(eol - p));
        sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
        if (!sp1 || !sp2 || eol - sp2 != 9 || memcmp(sp2 + 1, "HTTP/1.", 7) || (sp2[8] != '0' && sp2[8] != '1')) {
            c->keep_alive = 0;
            srv_error(c, 400, "invalid_request_error", "malformed HTTP request line");
            return 0;
        }
        minor = sp2[8] - '0';
        c->keep_alive = minor == 1;
        /* headers */
        for (line = eol + 2; line < hend; line = eol + 2) {
            char *colon, *v, *ve;
            eol = srv_crlf(line);
            colon = memchr(line, ':', (size_t)(eol - line));
            if (!colon || colon == line) {
                c->keep_alive = 0;
                srv_error(c, 400, "invalid_request_error", "malformed HTTP header line");
                return 0;
            }
            for (v = colon + 1; v < eol && (*v == ' ' || *v == '\t'); v++) {}
            for (ve = eol; ve > v && (ve[-1] == ' ' || ve[-1] == '\t'); ve--) {}
            if (srv_ieq(line, (size_t)(colon - line), "content-length")) {
                size_t k, val = 0;
                if (ve == v || ve - v > 15) val = (size_t)-1;
                for (k = 0; v + k < ve && val != (size_t)-1; k++)
                    val = v[k] >= '0' && v[k] <= '9' ? val * 10 + (size_t)(v[k] - '0') : (size_t)-1;
                if (val == (size_t)-1 || (have_len && val != body_len)) {
                    c->keep_alive = 0;
                    srv_error(c, 400, "invalid_request_error", "bad Content-Length");
                    return 0;
                }
                body_len = val;
                have_len = 1;
            } else if (srv_ieq(line, (size_t)(colon - line), "transfer-encoding")) chunked = 1;
            else if (srv_ieq(line, (size_t)(colon - line), "connection")) {
                if (srv_ieq(v, (size_t)(ve - v), "close")) c->keep_alive = 0;
                else if (srv_ieq(v, (size_t)(ve - v), "keep-alive")) c->keep_alive = 1;
            } else if (srv_ieq(line, (size_t)(colon - line), "expect")) expect = srv_ieq(v, (size_t)(ve - v), "100-continue");
        }
        if (chunked) {
            c->keep_alive = 0;
            srv_error(c, 411, "invalid_request_error", "chunked request bodies are not supported: send Content-Length");
            return 0;
        }
        if (body_len > (size_t)sv->o.max_body) {
            c->keep_alive = 0;
            srv_error(c, 413, "invalid_request_error", "the body has %lu bytes, more than the limit of %d",
                      (unsigned long)body_len, sv->o.max_body);
            return 0;
        }
        if (c->in.n < hlen + body_len) {
            if (expect && !c->sent_continue) { srv_buf_str(&c->out, "HTTP/1.1 100 Continue\r\n\r\n"); c->sent_continue = 1; }
            return 0;
        }
        c->sent_continue = 0;
        /* route: the path without a query string */
        *sp2 = 0;
        path_end = strchr(sp1 + 1, '?');
        if (path_end) *(char *)path_end = 0;
        is_get = sp1 - p == 3 && !memcmp(p, "GET", 3);
        is_post = sp1 - p == 4 && !memcmp(p, "POST", 4);
        {
            const char *path = sp1 + 1, *body = p + hlen;
            int chat = !strcmp(path, "/v1/chat/completions") || !strcmp(path, "/chat/completions");
            int compl = !strcmp(path, "/v1/completions") || !strcmp(path, "/completions");
            int models = !strcmp(path, "/v1/models") || !strcmp(path, "/models");
            int health = !strcmp(path, "/health");
            if (((chat || compl) && !is_post) || ((models || health) && !is_get)) {
                srv_error(c, 405, "invalid_request_error", "%s takes %s", path, chat || compl ? "POST" : "GET");
            } else if (chat || compl) {
                srv_completion(sv, ci, body, body_len, chat);
            } else if (health) {
                srv_respond(c, 200, "application/json", "{\"status\":\"ok\"}", 15, NULL);
            } else if (models) {
                srv_buf b = {0};
                srv_buf_str(&b, "{\"object\":\"list\",\"data\":[{\"id\":");
                srv_json_str(&b, sv->model_name, strlen(sv->model_name));
                srv_buf_printf(&b, ",\"object\":\"model\",\"created\":%ld,\"owned_by\":\"gemma2.h\",\"meta\":{\"n_ctx\":%d,"
                                   "\"n_vocab\":%d,\"slots\":%d}}]}",
                               (long)time(NULL), sv->n_ctx, gemma2_vocab_size(sv->m), sv->n_slots);
                srv_respond(c, 200, "application/json", b.p ? b.p : "", b.n, NULL);
                srv_buf_free(&b);
            } else {
                srv_error(c, 404, "not_found_error", "no such endpoint: %s", path);
            }
        }
        srv_buf_consume(&c->in, hlen + body_len);
    }
    return 0;
}

/* ---------------------------------------------------------------- the loop */

static int srv_listen(srv *sv)
{
    struct addrinfo hints, *res = NULL, *ai;
    char port[16];
    int one = 1;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    sprintf(port, "%d", sv->o.port);
    if (getaddrinfo(sv->o.host, port, &hints, &res) != 0 || !res) {
        fprintf(stderr, "server: cannot resolve --host %s\n", sv->o.host);
        return -1;
    }
    sv->lfd = SRV_BAD_SOCK;
    for (ai = res; ai; ai = ai->ai_next) {
        srv_sock fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd == SRV_BAD_SOCK) continue;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, (const char *)&one, sizeof one);
        if (bind(fd, ai->ai_addr, (socklen_t)ai->ai_addrlen) == 0 && listen(fd, 128) == 0) { sv->lfd = fd; break; }
        srv_closesock(fd);
    }
    freeaddrinfo(res);
    if (sv->lfd == SRV_BAD_SOCK) {
        fprintf(stderr, "server: cannot listen on %s:%d\n", sv->o.host, sv->o.port);
        return -1;
    }
    srv_set_nonblocking(sv->lfd);
    {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (getsockname(sv->lfd, (struct sockaddr *)&ss, &sl) == 0)
            sv->o.port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                        : ((struct sockaddr_in *)&ss)->sin_port);
    }
    return 0;
}

static void srv_accept(srv *sv)
{
    for (;;) {
        srv_sock fd = accept(sv->lfd, NULL, NULL);
        int i, one = 1;
        if (fd == SRV_BAD_SOCK) return;
        for (i = 0; i < SRV_MAX_CONNS && sv->conns[i].used; i++) {}
        if (i == SRV_MAX_CONNS) {
            static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                       "Content-Length: 79\r\nConnection: close\r\n\r\n"
                                       "{\"error\":{\"message\":\"too many connections\",\"type\":\"server_busy\",\"code\":503}}";
            send(fd, busy, (int)sizeof busy - 1, SRV_SEND_FLAGS);
            srv_closesock(fd);
            continue;
        }
        srv_set_nonblocking(fd);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, (const char *)&one, sizeof one);
        memset(&sv->conns[i], 0, sizeof sv->conns[i]);
        sv->conns[i].fd = fd;
        sv->conns[i].used = 1;
        sv->conns[i].last_active = srv_now();
    }
}

/* Reads what a connection has. Returns -1 when the client closed or failed. */
static int srv_conn_read(srv_conn *c, int max_in)
{
    char tmp[16384];
    for (;;) {
#if defined(_WIN32)
        int k = recv(c->fd, tmp, (int)sizeof tmp, 0);
#else
        ssize_t k = recv(c->fd, tmp, sizeof tmp, 0);
#endif
        if (k == 0) return -1;
        if (k < 0) return SRV_WOULDBLOCK(srv_errno()) ? 0 : -1;
        srv_buf_add(&c->in, tmp, (size_t)k);
        if (srv_oom) return -1;
        c->last_active = srv_now();
        /* more than the largest request is never needed at once: the rest waits in the socket */
        if (c->in.n > (size_t)max_in) return 0;
    }
}

static int srv_run(srv *sv)
{
    struct pollfd *pfd = (struct pollfd *)calloc(SRV_MAX_CONNS + 1, sizeof *pfd);
    int map[SRV_MAX_CONNS + 1];
    if (!pfd) return 1;
    while (!srv_stop_flag) {
        int np = 0, i, active = 0, rc;
        double now;
        for (i = 0; i < sv->n_slots; i++) active |= sv->slots[i].job != NULL;
        pfd[np].fd = sv->lfd;
        pfd[np].events = POLLIN;
        pfd[np].revents = 0;
        map[np++] = -1;
        for (i = 0; i < SRV_MAX_CONNS; i++) {
            srv_conn *c = &sv->conns[i];
            if (!c->used) continue;
            pfd[np].fd = c->fd;
            /* input stops being read past the largest request, but a closed peer is still seen (POLLHUP) */
            pfd[np].events = (short)((c->in.n <= (size_t)sv->o.max_body + SRV_MAX_HEADER ? POLLIN : 0) | (c->out.n ? POLLOUT : 0));
            pfd[np].revents = 0;
            map[np++] = i;
        }
        /* while slots decode, the loop only looks at the sockets between tokens */
        rc = srv_poll(pfd, (unsigned)np, active || sv->n_queue ? 0 : 500);
        if (rc < 0 && !SRV_WOULDBLOCK(srv_errno())) break;
        now = srv_now();
        for (i = 0; i < np; i++) {
            int ci = map[i];
            srv_conn *c;
            if (ci < 0) {
                if (pfd[i].revents & POLLIN) srv_accept(sv);
                continue;
            }
            c = &sv->conns[ci];
            if (pfd[i].revents & (POLLERR | POLLNVAL)) { srv_conn_drop(sv, ci); continue; }
            if ((pfd[i].revents & (POLLIN | POLLHUP)) && srv_conn_read(c, sv->o.max_body + SRV_MAX_HEADER) != 0) { srv_conn_drop(sv, ci); continue; }
            if (srv_conn_requests(sv, ci) != 0 || srv_conn_flush(c) != 0) { srv_conn_drop(sv, ci); continue; }
            if (c->close_after_write && c->out.n == 0) { srv_conn_drop(sv, ci); continue; }
            if (!c->busy && c->out.n == 0 && now - c->last_active > SRV_IDLE_SECONDS) srv_conn_drop(sv, ci);
        }
        /* queued requests into free slots, oldest first */
        while (sv->n_queue > 0) {
            int free_slot = 0;
            srv_job *j;
            for (i = 0; i < sv->n_slots; i++) free_slot |= sv->slots[i].job == NULL;
            if (!free_slot) break;
            j = sv->queue[0];
            memmove(sv->queue, sv->queue + 1, (size_t)(sv->n_queue - 1) * sizeof *sv->queue);
            sv->n_queue--;
            srv_slot_start(sv, j);
        }
        srv_slots_advance(sv);
        /* what the step wrote goes out now; a client that is gone frees its slot here */
        for (i = 0; i < SRV_MAX_CONNS; i++) {
            srv_conn *c = &sv->conns[i];
            if (!c->used || c->out.n == 0) continue;
            if (srv_conn_flush(c) != 0) { srv_conn_drop(sv, i); continue; }
            if (c->close_after_write && c->out.n == 0) { srv_conn_drop(sv, i); continue; }
            /* a keep-alive connection's next request, already received */
            if (!c->busy && c->in.n > 0) {
                if (srv_conn_requests(sv, i) != 0 || srv_conn_flush(c) != 0) srv_conn_drop(sv, i);
            }
        }
    }
    free(pfd);
    return 0;
}

/* ---------------------------------------------------------------- main */

static void srv_usage(FILE *o)
{
    fprintf(o,
        "usage: server -m MODEL_DIR [options]\n"
        "\n"
        "  -m, --model DIR        Hugging Face Gemma 2 folder (or one saved by examples/quantize)\n"
        "      --tokenizer FILE   tokenizer.json or tokenizer.model (default: the model folder's)\n"
        "      --host ADDR        address to listen on (default 127.0.0.1: this machine only)\n"
        "      --port N           port (default 8080; 0: any free port, printed when ready)\n"
        "  -np, --parallel N      slots: requests decoded at the same time (default 1, at most %d)\n"
        "  -c, --ctx-size N       context of each slot in tokens (default 4096; 0 = the model's maximum)\n"
        "  -t, --threads N        threads per slot (default 0: all cores)\n"
        "      --queue N          requests that may wait for a slot; more get 503 (default 64)\n"
        "      --max-body N       largest request body in bytes; larger get 413 (default 1048576)\n"
        "  -a, --alias NAME       the model's name in responses (default: the folder's name)\n"
        "  -h, --help             this help\n"
        "\n"
        "Prints \"server: listening on http://HOST:PORT\" on stdout when ready.\n", SRV_MAX_SLOTS);
}

static int srv_int_arg(const char *s, long lo, long hi, int *out)
{
    char *end;
    long v;
    if (!s || !*s) return 0;
    v = strtol(s, &end, 10);
    if (*end || v < lo || v > hi) return 0;
    *out = (int)v;
    return 1;
}

int main(int argc, char **argv)
{
    static srv sv;
    gemma2_options mo = gemma2_options_default();
    char err[512];
    const char *base;
    int i, rc = 0;
    sv.o.host = "127.0.0.1";
    sv.o.port = 8080;
    sv.o.parallel = 1;
    sv.o.n_ctx = 4096;
    sv.o.queue = 64;
    sv.o.max_body = 1 << 20;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1, used = 1;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { srv_usage(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) ok = (sv.o.model = v) != NULL;
        else if (!strcmp(a, "--tokenizer")) ok = (sv.o.tokenizer = v) != NULL;
        else if (!strcmp(a, "--host")) ok = (sv.o.host = v) != NULL;
        else if (!strcmp(a, "-a") || !strcmp(a, "--alias")) ok = (sv.o.alias = v) != NULL;
        else if (!strcmp(a, "--port")) ok = srv_int_arg(v, 0, 65535, &sv.o.port);
        else if (!strcmp(a, "-np") || !strcmp(a, "--parallel")) ok = srv_int_arg(v, 1, SRV_MAX_SLOTS, &sv.o.parallel);
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) ok = srv_int_arg(v, 0, 1 << 20, &sv.o.n_ctx);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) ok = srv_int_arg(v, 0, 1024, &sv.o.n_threads);
        else if (!strcmp(a, "--queue")) ok = srv_int_arg(v, 0, 1 << 20, &sv.o.queue);
        else if (!strcmp(a, "--max-body")) ok = srv_int_arg(v, 1, 1 << 30, &sv.o.max_body);
        else { fprintf(stderr, "server: unknown option %s (--help lists them)\n", a); return 2; }
        if (!ok) { fprintf(stderr, "server: %s needs a valid value (--help)\n", a); return 2; }
        i += used;
    }
    if (!sv.o.model) { srv_usage(stderr); return 2; }
#if defined(_WIN32)
    {
        WSADATA wd;
        if (WSAStartup(MAKEWORD(2, 2), &wd) != 0) { fprintf(stderr, "server: WSAStartup failed\n"); return 1; }
    }
#else
    signal(SIGPIPE, SIG_IGN);
#endif
    signal(SIGINT, srv_on_signal);
    signal(SIGTERM, srv_on_signal);

    mo.n_threads = sv.o.n_threads;
    mo.tokenizer_path = sv.o.tokenizer;
    sv.m = gemma2_load(sv.o.model, &mo, err, sizeof err);
    if (!sv.m) { fprintf(stderr, "server: %s\n", err); return 1; }
    if (!gemma2_has_tokenizer(sv.m)) {
        fprintf(stderr, "server: %s has no tokenizer.json or tokenizer.model: give one with --tokenizer FILE\n", sv.o.model);
        gemma2_free(sv.m);
        return 1;
    }
    sv.cfg = gemma2_model_config(sv.m);
    sv.n_ctx = sv.o.n_ctx == 0 || sv.o.n_ctx > sv.cfg->max_position_embeddings ? sv.cfg->max_position_embeddings : sv.o.n_ctx;
    if (sv.o.alias) base = sv.o.alias;
    else {
        size_t n = strlen(sv.o.model);
        while (n > 1 && (sv.o.model[n - 1] == '/' || sv.o.model[n - 1] == '\\')) n--;
        base = sv.o.model + n;
        while (base > sv.o.model && base[-1] != '/' && base[-1] != '\\') base--;
        snprintf(sv.model_name, sizeof sv.model_name, "%.*s", (int)(sv.o.model + n - base), base);
        base = NULL;
    }
    if (base) snprintf(sv.model_name, sizeof sv.model_name, "%s", base);
    sv.n_slots = sv.o.parallel;
    /* room for every slot's token and one 128-token prompt pass in each step */
    sv.batch = gemma2_batch_new(sv.m, sv.n_slots + 128, sv.o.n_threads, &rc);
    if (!sv.batch) {
        fprintf(stderr, "server: cannot make the batch for %d slots: %s\n", sv.n_slots, gemma2_error_string(rc));
        gemma2_free(sv.m);
        return 1;
    }
    for (i = 0; i < sv.n_slots; i++) {
        int src;
        sv.slots[i].sv = &sv;
        sv.slots[i].s = gemma2_session_new_ex(sv.m, sv.n_ctx, &src);
        if (!sv.slots[i].s) {
            fprintf(stderr, "server: slot %d: cannot create a session of %d tokens: %s\n", i, sv.n_ctx, gemma2_error_string(src));
            rc = 1;
            goto done;
        }
    }
    sv.queue = (srv_job **)calloc((size_t)sv.o.queue + (size_t)sv.n_slots + 1, sizeof *sv.queue); /* waiting: up to --queue, plus one per free slot */
    for (i = 0; i < SRV_MAX_CONNS; i++) sv.conns[i].fd = SRV_BAD_SOCK;
    if (!sv.queue || srv_listen(&sv) != 0) { rc = 1; goto done; }
    printf("server: listening on http://%s:%d (model %s, %d slot%s of %d tokens, kernels %s)\n", sv.o.host, sv.o.port,
           sv.model_name, sv.n_slots, sv.n_slots == 1 ? "" : "s", sv.n_ctx, gemma2_model_kernels(sv.m));
    fflush(stdout);
    rc = srv_run(&sv);
    srv_closesock(sv.lfd);
done:
    for (i = 0; i < SRV_MAX_CONNS; i++) srv_conn_drop(&sv, i);
    for (i = 0; i < sv.n_queue; i++) srv_job_free(sv.queue[i]);
    free(sv.queue);
    for (i = 0; i < sv.n_slots; i++) {
        srv_slot_release(&sv.slots[i]);
        srv_buf_free(&sv.slots[i].text);
        gemma2_session_free(sv.slots[i].s);
    }
    gemma2_batch_free(sv.batch);
    gemma2_free(sv.m);
#if defined(_WIN32)
    WSACleanup();
#endif
    return rc;
}
