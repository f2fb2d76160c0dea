"""Django REST framework: API views, viewsets, generic views, mixins, actions, function views."""

from django.db import transaction
from django.utils.decorators import method_decorator
from rest_framework import generics, mixins, status, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.response import Response
from rest_framework.views import APIView

from idempotent import idempotent as idem

from .models import Payment
from .serializers import PaymentSerializer


class PaymentList(APIView):
    def get(self, request):
        return Response([])

    def post(self, request):  # finding: explicit post, writes
        serializer = PaymentSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        serializer.save()
        return Response(serializer.data, status=status.HTTP_201_CREATED)


class PaymentDetail(APIView):
    @idem(key_from="pk")
    def put(self, request, pk):  # decorated method
        return Response({})

    @transaction.atomic
    def patch(self, request, pk):  # finding: transaction.atomic is not idempotency
        Payment.objects.filter(pk=pk).update(**request.data)
        return Response({})


class PaymentViewSet(viewsets.ModelViewSet):  # finding: POST, PUT, PATCH implicit
    queryset = Payment.objects.all()
    serializer_class = PaymentSerializer


class RefundViewSet(viewsets.ViewSet):
    def list(self, request):
        return Response([])

    def create(self, request):  # finding: create action
        return Response({}, status=201)

    @idem(key_from="pk")
    def update(self, request, pk=None):  # decorated action
        return Response({})

    def partial_update(self, request, pk=None):  # reads the header itself
        return Response({"key": request.headers.get("Idempotency-Key")})

    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):  # finding: POST action
        Payment.objects.filter(pk=pk).update(approved=True)
        return Response({})

    @action(detail=False)
    def recent(self, request):  # GET action
        return Response([])


class CreateOnly(mixins.CreateModelMixin, viewsets.GenericViewSet):  # finding: mixin create
    serializer_class = PaymentSerializer

    def perform_create(self, serializer):
        serializer.save(owner=self.request.user)


class ReadOnly(viewsets.ReadOnlyModelViewSet):  # GET only
    queryset = Payment.objects.all()


class PaymentCreate(generics.ListCreateAPIView):  # finding: ListCreateAPIView implies POST
    serializer_class = PaymentSerializer


@method_decorator(idem(key_from="request"), name="dispatch")
class GuardedCreate(generics.CreateAPIView):  # handled through dispatch
    serializer_class = PaymentSerializer


class PaymentRemove(generics.DestroyAPIView):  # DELETE only: not checked by default
    queryset = Payment.objects.all()


@api_view(["GET", "POST"])
def capture(request):  # finding: api_view with POST
    Payment.objects.create(**request.data)
    return Response({})


@api_view()
def status_view(request):  # GET only
    return Response({})


@api_view(["PATCH"])
@idem(key_from=lambda request: request.headers["Idempotency-Key"])
def adjust(request):  # decorated (and reads the header)
    return Response({})
