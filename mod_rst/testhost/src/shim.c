/*
 * The variadic part of the test host, which stable Rust cannot define:
 * switch_log_printf and the write_function of the switch_stream_handle_t the
 * host hands to API functions. Both format with vsnprintf and pass the text on
 * to Rust (fs_host_log, fs_host_stream_violation).
 *
 * The stream follows FreeSWITCH's switch_console_stream_write
 * (SWITCH_STANDARD_STREAM): a NUL-terminated buffer in data, end at its NUL,
 * data_len bytes used, grown by alloc_chunk.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* switch_stream_handle_t, FreeSWITCH 1.10 layout (80 bytes). */
typedef struct host_stream_handle {
	void *read_function;
	void *write_function;
	void *raw_write_function;
	void *data;
	void *end;
	size_t data_size;
	size_t data_len;
	size_t alloc_len;
	size_t alloc_chunk;
	void *param_event;
} host_stream_handle_t;

/* The host's stream: FreeSWITCH's handle first, then what the host tracks. */
typedef struct host_stream {
	host_stream_handle_t handle;
	uint64_t magic;
	int closed;
	unsigned writes;
} host_stream_t;

#define HOST_STREAM_MAGIC 0x53545245414d2121ULL

extern void fs_host_log(int channel, const char *file, const char *func, int line, const char *userdata, int level,
						const char *text, int fmt_null);
extern void fs_host_stream_violation(const char *what);

static char *host_vformat(const char *fmt, va_list ap)
{
	va_list copy;
	int need;
	char *text;

	va_copy(copy, ap);
	need = vsnprintf(NULL, 0, fmt, copy);
	va_end(copy);
	if (need < 0) {
		return NULL;
	}
	text = malloc((size_t)need + 1);
	if (text) {
		vsnprintf(text, (size_t)need + 1, fmt, ap);
	}
	return text;
}

void switch_log_printf(int channel, const char *file, const char *func, int line, const char *userdata, int level,
					   const char *fmt, ...)
{
	va_list ap;
	char *text;

	if (!fmt) {
		fs_host_log(channel, file, func, line, userdata, level, "", 1);
		return;
	}
	va_start(ap, fmt);
	text = host_vformat(fmt, ap);
	va_end(ap);
	fs_host_log(channel, file, func, line, userdata, level, text ? text : "(format error)", 0);
	free(text);
}

static host_stream_t *host_stream_of(void *handle)
{
	host_stream_t *stream = handle;
	if (!stream || stream->magic != HOST_STREAM_MAGIC) {
		fs_host_stream_violation("stream write_function called with a handle that is not the host's stream");
		return NULL;
	}
	if (stream->closed) {
		fs_host_stream_violation("stream written after the API function returned (use after free in FreeSWITCH)");
		return NULL;
	}
	return stream;
}

static int host_stream_append(host_stream_t *stream, const char *bytes, size_t len)
{
	host_stream_handle_t *h = &stream->handle;
	size_t need = len + 1;

	if (h->data_size - h->data_len < need) {
		size_t grow = h->alloc_chunk ? h->alloc_chunk : 1024;
		size_t size = h->data_size;
		void *data;
		while (size - h->data_len < need) {
			size += grow;
		}
		if (!(data = realloc(h->data, size))) {
			return 1;
		}
		h->data = data;
		h->data_size = size;
		h->alloc_len = size;
	}
	memcpy((char *)h->data + h->data_len, bytes, len);
	h->data_len += len;
	((char *)h->data)[h->data_len] = '\0';
	h->end = (char *)h->data + h->data_len;
	return 0;
}

int fs_host_stream_write(void *handle, const char *fmt, ...)
{
	host_stream_t *stream = host_stream_of(handle);
	va_list ap;
	char *text;
	int failed;

	if (!stream) {
		return 1; /* SWITCH_STATUS_FALSE */
	}
	stream->writes++;
	if (!fmt) {
		fs_host_stream_violation("stream write_function called with a NULL format");
		return 1;
	}
	va_start(ap, fmt);
	text = host_vformat(fmt, ap);
	va_end(ap);
	if (!text) {
		return 1;
	}
	failed = host_stream_append(stream, text, strlen(text));
	free(text);
	return failed;
}

int fs_host_stream_raw_write(void *handle, const uint8_t *data, size_t datalen)
{
	host_stream_t *stream = host_stream_of(handle);
	if (!stream) {
		return 1;
	}
	stream->writes++;
	return host_stream_append(stream, (const char *)data, datalen);
}

/* A fresh stream, as SWITCH_STANDARD_STREAM makes it. Never freed: a module
 * that keeps the handle and writes later is reported instead of crashing. */
void *fs_host_stream_new(void)
{
	host_stream_t *stream = calloc(1, sizeof(*stream));
	if (!stream) {
		return NULL;
	}
	stream->handle.data = calloc(1, 1024);
	stream->handle.end = stream->handle.data;
	stream->handle.data_size = 1024;
	stream->handle.alloc_len = 1024;
	stream->handle.alloc_chunk = 1024;
	stream->handle.write_function = (void *)fs_host_stream_write;
	stream->handle.raw_write_function = (void *)fs_host_stream_raw_write;
	stream->magic = HOST_STREAM_MAGIC;
	return stream;
}

/* Closes the stream: returns its text (the caller frees it) and its write count. */
char *fs_host_stream_close(void *handle, unsigned *writes)
{
	host_stream_t *stream = handle;
	char *text;
	stream->closed = 1;
	*writes = stream->writes;
	text = stream->handle.data;
	stream->handle.data = NULL;
	stream->handle.end = NULL;
	stream->handle.data_size = 0;
	stream->handle.data_len = 0;
	return text;
}
