/*
 * delay_proxy.h - a loopback TCP proxy run as threads inside a cluster unit test: every
 * piece of data is held for a set time before it is passed on. Delaying what the server
 * sends makes a slow, not dead, Redis (each reply late, well inside the command timeout);
 * delaying what the client sends makes one node's commands reach Redis late. Header-only,
 * like cluster_fixture.h.
 */
#ifndef RACKDISK_TESTS_DELAY_PROXY_H
#define RACKDISK_TESTS_DELAY_PROXY_H

#include <pthread.h>

#include "cluster_fixture.h"

#define FX_PROXY_MAX_CONN 64

struct fx_proxy {
	int port;                  /* set by fx_proxy_start: clients connect here */
	int target;                /* the server's port */
	unsigned up_ms, down_ms;   /* client -> server, server -> client */
	int lfd;
	pthread_t thread;
	pthread_mutex_t lock;      /* guards fds and pumps */
	int fds[2 * FX_PROXY_MAX_CONN];
	int pumps;                 /* pump threads running */
	bool stopping;
};

struct fx_pump {
	struct fx_proxy *p;
	int from, to;
	unsigned delay_ms;
};

static inline int fx_connect_port(int port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (s >= 0 && connect(s, (struct sockaddr *)&a, sizeof(a)) < 0) {
		close(s);
		s = -1;
	}
	return s;
}

static void *fx_pump_main(void *arg)
{
	struct fx_pump *pu = arg;
	struct fx_proxy *p = pu->p;
	static __thread char buf[65536];
	ssize_t n;

	while ((n = read(pu->from, buf, sizeof(buf))) > 0) {
		ssize_t off = 0;

		if (pu->delay_ms)
			fx_sleep_ms(pu->delay_ms);
		while (off < n) {
			ssize_t w = write(pu->to, buf + off, n - off);

			if (w <= 0)
				goto out;
			off += w;
		}
	}
out:
	/* the other direction ends too: its reads and writes fail from now on */
	shutdown(pu->from, SHUT_RDWR);
	shutdown(pu->to, SHUT_RDWR);
	pthread_mutex_lock(&p->lock);
	p->pumps--;
	pthread_mutex_unlock(&p->lock);
	free(pu);
	return NULL;
}

static inline void fx_pump_start(struct fx_proxy *p, int from, int to, unsigned delay_ms)
{
	struct fx_pump *pu = calloc(1, sizeof(*pu));
	pthread_t t;

	if (!pu)
		abort();
	pu->p = p;
	pu->from = from;
	pu->to = to;
	pu->delay_ms = delay_ms;
	p->pumps++;
	if (pthread_create(&t, NULL, fx_pump_main, pu))
		abort();
	pthread_detach(t);
}

static void *fx_proxy_main(void *arg)
{
	struct fx_proxy *p = arg;

	for (;;) {
		int c = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC), s, i;

		if (c < 0)
			break;
		s = fx_connect_port(p->target);
		pthread_mutex_lock(&p->lock);
		for (i = 0; i < 2 * FX_PROXY_MAX_CONN && p->fds[i] >= 0; i += 2)
			;
		if (p->stopping || s < 0 || i == 2 * FX_PROXY_MAX_CONN) {
			pthread_mutex_unlock(&p->lock);
			close(c);
			if (s >= 0)
				close(s);
			continue;
		}
		p->fds[i] = c;
		p->fds[i + 1] = s;
		fx_pump_start(p, c, s, p->up_ms);
		fx_pump_start(p, s, c, p->down_ms);
		pthread_mutex_unlock(&p->lock);
	}
	return NULL;
}

/* Listens on a free loopback port (p->port) and forwards to p->target. 0 or -1. */
static inline int fx_proxy_start(struct fx_proxy *p)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t l = sizeof(a);

	pthread_mutex_init(&p->lock, NULL);
	memset(p->fds, -1, sizeof(p->fds));
	p->pumps = 0;
	p->stopping = false;
	p->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (p->lfd < 0 || bind(p->lfd, (struct sockaddr *)&a, sizeof(a)) ||
	    getsockname(p->lfd, (struct sockaddr *)&a, &l) || listen(p->lfd, 64))
		return -1;
	p->port = ntohs(a.sin_port);
	return pthread_create(&p->thread, NULL, fx_proxy_main, p) ? -1 : 0;
}

/* Stops accepting, cuts every connection and waits (bounded) for the pumps to end. */
static inline void fx_proxy_stop(struct fx_proxy *p)
{
	int i;

	pthread_mutex_lock(&p->lock);
	p->stopping = true;
	pthread_mutex_unlock(&p->lock);
	shutdown(p->lfd, SHUT_RDWR);
	pthread_join(p->thread, NULL);
	close(p->lfd);
	pthread_mutex_lock(&p->lock);
	for (i = 0; i < 2 * FX_PROXY_MAX_CONN; i++)
		if (p->fds[i] >= 0)
			shutdown(p->fds[i], SHUT_RDWR);
	pthread_mutex_unlock(&p->lock);
	/* a pump may be in its delay: at most one delay each, plus a margin */
	for (i = 0; i < 500; i++) {
		bool done;

		pthread_mutex_lock(&p->lock);
		done = p->pumps == 0;
		pthread_mutex_unlock(&p->lock);
		if (done)
			break;
		fx_sleep_ms(10);
	}
	for (i = 0; i < 2 * FX_PROXY_MAX_CONN; i++)
		if (p->fds[i] >= 0) {
			close(p->fds[i]);
			p->fds[i] = -1;
		}
	pthread_mutex_destroy(&p->lock);
}

#endif
