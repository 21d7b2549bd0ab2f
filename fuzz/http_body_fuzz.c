/* libFuzzer target: the request glue of csrc/http.c that reads untrusted
 * bytes itself (libmicrohttpd parses the rest): the Content-Length value and
 * the body accumulation that enforces maxMessageSize while the body streams
 * in. http.c is included so its static functions are reachable.
 *
 * Input: 2 bytes of body limit, a Content-Length value up to the first '\n',
 * then chunks, each one length byte followed by that many bytes. Checked:
 * nothing beyond the limit is ever buffered, the buffered body is exactly the
 * bytes received, and "too large" is set exactly when they pass the limit. */
#include "../csrc/http.c"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

static void body_fail(const char *what) {
    fprintf(stderr, "http_body_fuzz: %s\n", what);
    abort();
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    if (size < 2) return 0;
    http_server srv;
    memset(&srv, 0, sizeof srv);
    srv.max_body = (size_t)data[0] << 8 | data[1];
    if (srv.max_body == 0) srv.max_body = 1;
    data += 2, size -= 2;

    const unsigned char *nl = memchr(data, '\n', size);
    size_t cl_len = nl ? (size_t)(nl - data) : size;
    char *cl = malloc(cl_len + 1);
    memcpy(cl, data, cl_len);
    cl[cl_len] = '\0';
    int present;
    size_t announced = http_parse_content_length(cl_len ? cl : NULL, &present);
    if (present != (cl_len != 0)) body_fail("presence misread");
    if (!present && announced != 0) body_fail("absent header read as a length");
    free(cl);
    if (nl == NULL) return 0;
    data = nl + 1, size -= cl_len + 1;

    http_request req;
    memset(&req, 0, sizeof req);
    req.srv = &srv;
    unsigned char *expect = malloc(size + 1);
    size_t total = 0;
    while (size > 0) {
        size_t n = data[0];
        data++, size--;
        if (n > size) n = size;
        http_take_body(&req, (const char *)data, n);
        memcpy(expect + total, data, n);
        total += n;
        data += n, size -= n;
        if (req.len > srv.max_body || req.cap > srv.max_body) body_fail("buffered beyond the limit");
        if (!req.too_large) {
            if (req.len != total) body_fail("body length differs from bytes received");
            if (total && memcmp(req.body, expect, total) != 0) body_fail("body differs from bytes received");
        } else if (total <= srv.max_body) {
            body_fail("too large under the limit");
        }
    }
    free(expect);
    free(req.body);
    return 0;
}
