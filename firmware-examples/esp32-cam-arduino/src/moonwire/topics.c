#include "topics.h"

static int id_ok(const char *id)
{
    size_t n = 0;
    if (id == NULL || id[0] == '\0') {
        return 0;
    }
    for (; id[n] != '\0'; n++) {
        unsigned char c = (unsigned char)id[n];
        if (n >= MW_ID_MAX || c == '/' || c == '+' || c == '#' || c < 0x20u || c == 0x7Fu) {
            return 0;
        }
    }
    return 1;
}

static size_t put(char *buf, size_t cap, size_t at, const char *s)
{
    while (*s != '\0') {
        if (at + 1u >= cap) {
            return 0;
        }
        buf[at++] = *s++;
    }
    return at;
}

size_t mw_topic(char *buf, size_t cap, const char *root, const char *id,
                const char *leaf)
{
    size_t at;
    if (buf == NULL || cap == 0u || root == NULL || leaf == NULL || !id_ok(id)) {
        return 0;
    }
    at = put(buf, cap, 0, root);
    at = at ? put(buf, cap, at, "/") : 0;
    at = at ? put(buf, cap, at, id) : 0;
    at = at ? put(buf, cap, at, "/") : 0;
    at = at ? put(buf, cap, at, leaf) : 0;
    buf[at] = '\0';
    return at;
}
